//! The file-sharing demo's store: `POST /demo/files/{room}?name=…` takes a file's bytes (at
//! most `[demo] max_file_size`), keeps it in the data directory (`demo-files/`, the oldest
//! removed past `[demo] max_total_file_size`) and announces it on the room's channel;
//! `GET /demo/files/{room}/{id}` gives it back, always as a download.

use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::{ChannelName, PublishRequest};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
    /// Who shared it (the page's nickname), shown to the others.
    by: Option<String>,
    /// The uploader's id for this upload, so pages can replace its progress with the file.
    upload: Option<String>,
}

/// What is kept beside each file, and announced.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    name: String,
    size: usize,
    by: String,
    time: u64,
}

fn store_dir(app: &AppState, room: &str) -> PathBuf {
    app.settings.data_dir.join("demo-files").join(room)
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// A name to show and to download as: no path, no control characters, at most 200 bytes.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean: String = base.chars().filter(|c| !c.is_control()).collect();
    while clean.len() > 200 {
        clean.pop();
    }
    let clean = clean.trim().trim_start_matches('.').to_string();
    if clean.is_empty() { "file".to_string() } else { clean }
}

fn short_text(text: Option<&str>, fallback: &str, limit: usize) -> String {
    let text: String = text.unwrap_or(fallback).chars().filter(|c| !c.is_control()).take(limit).collect();
    if text.trim().is_empty() { fallback.to_string() } else { text }
}

pub async fn upload(
    State(app): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::demo::pages::valid_room(&room) {
        return Err(bad("invalid_room", "a room is 1 to 40 letters, digits, '-' or '_'"));
    }
    let limit = app.settings.demos.max_file_size;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("a file may be at most {limit} bytes"),
        ));
    }
    let id = format!("{:016x}", fastrand::u64(..));
    let stored = Stored {
        id: id.clone(),
        name: clean_name(query.name.as_deref().unwrap_or("file")),
        size: body.len(),
        by: short_text(query.by.as_deref(), "someone", 40),
        time: herald_core::unix_millis(),
    };
    let dir = store_dir(&app, &room);
    // One store change at a time: an eviction must not delete what another upload is writing
    // or measuring.
    let _store = STORE.lock().await;
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join(&id), &body).await?;
        tokio::fs::write(dir.join(format!("{id}.json")), serde_json::to_vec(&stored)?).await?;
        let root = app.settings.data_dir.join("demo-files");
        evict_oldest(&root, app.settings.demos.max_total_file_size, &dir.join(&id)).await
    };
    if let Err(error) = written.await {
        tracing::warn!(%error, "the file demo could not store a file");
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage_failed",
            format!("the file could not be stored: {error}"),
        ));
    }
    let url = format!("/demo/files/{room}/{id}");
    let announcement = serde_json::json!({
        "type": "file", "id": id, "name": stored.name, "size": stored.size, "by": stored.by,
        "upload": short_text(query.upload.as_deref(), "", 40), "url": url,
    });
    let channel =
        ChannelName::new(&format!("demo:files:{room}")).map_err(|error| bad("invalid_room", error.to_string()))?;
    let request = PublishRequest { channel, data: Bytes::from(announcement.to_string()), idempotency_key: None };
    crate::publish::publish(&app, request).await?;
    Ok(Json(serde_json::json!({ "id": id, "url": url, "size": stored.size })))
}

pub async fn download(State(app): State<AppState>, Path((room, id)): Path<(String, String)>) -> Response {
    let valid_id = id.len() == 16 && id.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !crate::demo::pages::valid_room(&room) || !valid_id {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    }
    let dir = store_dir(&app, &room);
    let (Ok(body), Ok(meta)) =
        (tokio::fs::read(dir.join(&id)).await, tokio::fs::read(dir.join(format!("{id}.json"))).await)
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file (files are removed, oldest first, past the store's size)",
        )
        .into_response();
    };
    let name = serde_json::from_slice::<Stored>(&meta).map(|stored| stored.name).unwrap_or_else(|_| "file".into());
    let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>().replace('+', "%20");
    let disposition = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            // Whatever was uploaded, it is handed back as bytes to save, never run as a page of
            // this origin.
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox")),
        ],
        body,
    )
        .into_response()
}

/// Serialises the file stores' changes (one per data directory; more in one process only in
/// tests, where waiting on each other costs nothing).
static STORE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Files the store keeps at most, whatever their size: each costs an inode and a block.
const MAX_FILES: usize = 1000;
/// What a file costs on disk at least (a block, and its metadata file's).
const FILE_OVERHEAD: usize = 8192;

/// Removes the oldest files until the store holds at most `limit` bytes (each file counted
/// with [`FILE_OVERHEAD`]) and [`MAX_FILES`] files, never removing `keep` (the file just
/// stored). A file already gone is no error.
async fn evict_oldest(root: &FsPath, limit: usize, keep: &FsPath) -> std::io::Result<()> {
    let mut files = Vec::new();
    let mut rooms = tokio::fs::read_dir(root).await?;
    while let Some(room) = rooms.next_entry().await? {
        if !room.file_type().await?.is_dir() {
            continue;
        }
        let mut entries = tokio::fs::read_dir(room.path()).await?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            if path.extension().is_some() || path == keep {
                continue; // the metadata goes with its file; the new file stays
            }
            let Ok(meta) = entry.metadata().await else { continue };
            files.push((meta.modified()?, meta.len() as usize + FILE_OVERHEAD, path));
        }
    }
    let kept = tokio::fs::metadata(keep).await.map_or(0, |meta| meta.len() as usize) + FILE_OVERHEAD;
    let mut total: usize = files.iter().map(|(_, size, _)| size).sum::<usize>() + kept;
    let mut count = files.len() + 1;
    files.sort();
    for (_, size, path) in files {
        if total <= limit && count <= MAX_FILES {
            break;
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let _ = tokio::fs::remove_file(path.with_extension("json")).await;
        total -= size;
        count -= 1;
    }
    Ok(())
}
