//! Scripts sent in a run request (`script_base64`) rather than named by a
//! host path: a client on another machine (`blink-cli --server`) runs its
//! own local script this way. Each is written to a private directory of
//! its own under `<data>/run-scripts`, kept while its run is queued and
//! running, and removed with it; what a killed server left is removed at
//! the next start. The SDK's script rules (`max_script_bytes`) apply.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::error::{ApiError, ApiResult};

/// Longest `script_name`.
const MAX_NAME: usize = 128;

/// A script on disk for one run; removed when dropped.
#[derive(Debug)]
pub struct InlineScript {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Drop for InlineScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("run-scripts")
}

/// Remove what an earlier server left.
pub fn clean(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(root(data_dir));
}

/// Decode and store a script; `name` is the file name it runs as.
pub fn store(
    data_dir: &Path,
    max_bytes: u64,
    encoded: &str,
    name: Option<&str>,
) -> ApiResult<InlineScript> {
    let name = name.unwrap_or("script");
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if !plain {
        return Err(ApiError::bad_request(
            "invalid_argument",
            format!("script_name must be a plain file name of at most {MAX_NAME} bytes"),
        ));
    }
    // Decoded size from the encoded length, checked before decoding.
    let estimate = (encoded.len() as u64 / 4) * 3;
    if estimate > max_bytes.saturating_add(3) {
        return Err(too_large(estimate, max_bytes));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_argument",
                format!("script_base64 is not base64: {e}"),
            )
        })?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64, max_bytes));
    }
    let root = root(data_dir);
    blink_sdk::runtime::local::private_dir(&root)?;
    let dir = root.join(uuid::Uuid::new_v4().simple().to_string());
    blink_sdk::runtime::local::private_dir(&dir)?;
    let script = InlineScript {
        path: dir.join(name),
        dir,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&script.path)
        .map_err(|e| blink_sdk::Error::io("storing the script", e))?;
    file.write_all(&bytes)
        .map_err(|e| blink_sdk::Error::io("storing the script", e))?;
    Ok(script)
}

fn too_large(size: u64, limit: u64) -> ApiError {
    blink_sdk::Error::TooLarge {
        what: "script_base64".into(),
        size,
        limit,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_stored_privately_and_removed_with_their_run() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\necho hi\n");
        let s = store(dir.path(), 1024, &b64, Some("hi.sh")).unwrap();
        assert_eq!(std::fs::read(&s.path).unwrap(), b"#!/bin/sh\necho hi\n");
        assert!(s.path.ends_with("hi.sh"));
        let path = s.path.clone();
        drop(s);
        assert!(!path.exists());

        let too_big = base64::engine::general_purpose::STANDARD.encode([0u8; 2000]);
        let e = store(dir.path(), 1024, &too_big, None).unwrap_err();
        assert_eq!(e.code, "too_large");
        for bad in ["../x", "", "a/b", ".."] {
            let e = store(dir.path(), 1024, &b64, Some(bad)).unwrap_err();
            assert!(e.message.contains("script_name"), "{bad}: {}", e.message);
        }
        let e = store(dir.path(), 1024, "!!!", None).unwrap_err();
        assert!(e.message.contains("script_base64"), "{}", e.message);
    }
}
