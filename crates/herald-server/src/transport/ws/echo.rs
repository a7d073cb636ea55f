//! `GET /ws/echo`: echoes every message on the same WebSocket stack, limits and write path as
//! `/ws`, for the Autobahn conformance suite. Off unless `websocket.echo_route` is set.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Socket;
use super::session::{CLOSE_WAIT, Ending, goodbye_after_error};
use crate::app::AppState;
use crate::transport::limits::ConnectionPermit;

/// Echoes until the peer or the server closes; `_permit` is the connection's admission.
pub async fn run(app: AppState, mut socket: Socket, _permit: ConnectionPermit) {
    loop {
        let frame = tokio::select! {
            () = app.shutdown.cancelled() => break,
            frame = socket.next() => frame,
        };
        let reply = match frame {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => {
                // The library queued its close reply while reading; send it.
                let _ = tokio::time::timeout(CLOSE_WAIT, socket.flush()).await;
                return;
            }
            Some(Err(error)) => {
                match Ending::from_read_error(error) {
                    Ending::PeerGone => {}
                    ending => goodbye_after_error(&mut socket, ending).await,
                }
                return;
            }
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
}
