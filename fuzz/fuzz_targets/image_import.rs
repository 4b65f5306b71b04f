//! An image archive (OCI layout or docker save, tar or gzip'd tar)
//! imported into a store: a rejected archive leaves the store as it was.
#![no_main]

use blink_sdk::image::{ImageStore, ImportOptions};
use libfuzzer_sys::fuzz_target;

fn listing(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), md.len()));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let archive = tmp.path().join("archive.tar");
    std::fs::write(&archive, data).unwrap();
    let before = listing(store.dir());
    let opts = ImportOptions {
        max_bytes: 1 << 20,
        max_entries: 256,
        max_json: 64 << 10,
    };
    match store.import_archive_with(&archive, None, &opts, None) {
        Ok(infos) => {
            for i in infos {
                store.resolve(&i.reference).unwrap();
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                listing(store.dir()),
                before,
                "rejected import changed the store"
            );
        }
    }
});
