//! A position on the wire: `{"epoch":"…","offset":N}`, the offset of the last publication
//! covered (0 = before the first) within one epoch of a channel's history.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}
