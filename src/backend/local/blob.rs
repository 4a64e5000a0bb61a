//! The embedded blob store, in memory or in a directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

use super::faults::FaultState;
use super::op::Op;
use crate::backend::{object_name_problem, BlobStore, ObjectMeta};
use crate::error::BackendError;

#[derive(Debug)]
enum Storage {
    Memory(DashMap<(String, String), (Bytes, ObjectMeta)>),
    Dir(PathBuf),
}

/// An embedded blob store. Create it with [`super::LocalBackend::blobs`] or
/// [`super::LocalBackend::with_blob_dir`].
#[derive(Debug)]
pub struct LocalBlobStore {
    storage: Storage,
    faults: Arc<FaultState>,
}

fn object_name(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

fn io_error(e: std::io::Error) -> BackendError {
    BackendError::transient(e.to_string())
}

fn invalid(bucket: &str, key: &str, why: &str) -> BackendError {
    BackendError::Invalid {
        message: format!(
            "unsupported object name {}: {why}",
            object_name(bucket, key)
        ),
    }
}

/// Checks a name as S3 would (see [`object_name_problem`]), and what a
/// directory needs besides: no empty segment and no segment that could
/// shadow a temporary file.
fn check_name(bucket: &str, key: &str, dir: bool) -> Result<(), BackendError> {
    if let Some(why) = object_name_problem(bucket, key) {
        return Err(invalid(bucket, key, &why));
    }
    if dir
        && key
            .split('/')
            .any(|seg| seg.is_empty() || seg.ends_with(TMP_SUFFIX))
    {
        return Err(invalid(bucket, key, "empty or reserved path segment"));
    }
    Ok(())
}

/// The object's data and metadata paths under `root`, after checking the
/// name. Nothing under the root may be a symbolic link: a link placed in
/// the store could lead a read or delete outside it.
fn dir_paths(root: &Path, bucket: &str, key: &str) -> Result<(PathBuf, PathBuf), BackendError> {
    check_name(bucket, key, true)?;
    let data = root.join(bucket).join(key);
    let meta = root.join(".meta").join(bucket).join(format!("{key}.json"));
    for path in [&data, &meta] {
        let mut at = root.to_path_buf();
        for part in path
            .strip_prefix(root)
            .expect("under the root")
            .components()
        {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(invalid(bucket, key, "a symbolic link in the path"))
                }
                Ok(_) => {}
                // Nothing further down exists either.
                Err(_) => break,
            }
        }
    }
    Ok((data, meta))
}

/// A temporary file beside `data`, unique to this write.
fn temp_path(data: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}{TMP_SUFFIX}", std::process::id()));
    data.with_file_name(name)
}

const TMP_SUFFIX: &str = ".ferry-tmp";

fn list_dir(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // Links are neither followed nor listed.
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            list_dir(base, &path, out)?;
        } else if !kind.is_file() {
            continue;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn meta_to_json(meta: &ObjectMeta) -> serde_json::Value {
    serde_json::json!({"content_type": meta.content_type, "metadata": meta.metadata})
}

fn meta_from_json(size: u64, v: &serde_json::Value) -> ObjectMeta {
    let metadata: HashMap<String, String> =
        serde_json::from_value(v["metadata"].clone()).unwrap_or_default();
    ObjectMeta {
        size,
        content_type: v["content_type"].as_str().map(str::to_owned),
        metadata,
    }
}

impl LocalBlobStore {
    pub(crate) fn memory(faults: Arc<FaultState>) -> Self {
        Self {
            storage: Storage::Memory(DashMap::new()),
            faults,
        }
    }

    pub(crate) fn dir(root: PathBuf, faults: Arc<FaultState>) -> Self {
        Self {
            storage: Storage::Dir(root),
            faults,
        }
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| BackendError::transient(e.to_string()))?
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        mut meta: ObjectMeta,
    ) -> Result<(), BackendError> {
        self.faults
            .before(Op::Put, &object_name(bucket, key))
            .await?;
        meta.size = body.len() as u64;
        match &self.storage {
            Storage::Memory(map) => {
                check_name(bucket, key, false)?;
                map.insert((bucket.to_owned(), key.to_owned()), (body, meta));
                Ok(())
            }
            Storage::Dir(root) => {
                let (data, meta_path) = dir_paths(root, bucket, key)?;
                Self::blocking(move || {
                    for p in [&data, &meta_path] {
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(io_error)?;
                        }
                    }
                    // Metadata first, then the object via rename: a reader sees
                    // either no object or a whole one.
                    std::fs::write(&meta_path, meta_to_json(&meta).to_string())
                        .map_err(io_error)?;
                    let tmp = temp_path(&data);
                    std::fs::write(&tmp, &body).map_err(io_error)?;
                    std::fs::rename(&tmp, &data).map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        io_error(e)
                    })
                })
                .await
            }
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        self.get_limited(bucket, key, usize::MAX).await
    }

    async fn get_limited(
        &self,
        bucket: &str,
        key: &str,
        limit: usize,
    ) -> Result<Bytes, BackendError> {
        let name = object_name(bucket, key);
        self.faults.before(Op::Get, &name).await?;
        let too_large = move |actual: u64| BackendError::PayloadTooLarge {
            actual: usize::try_from(actual).unwrap_or(usize::MAX),
            limit,
        };
        match &self.storage {
            Storage::Memory(map) => {
                check_name(bucket, key, false)?;
                let body = map
                    .get(&(bucket.to_owned(), key.to_owned()))
                    .map(|e| e.0.clone())
                    .ok_or(BackendError::NotFound { resource: name })?;
                if body.len() > limit {
                    return Err(too_large(body.len() as u64));
                }
                Ok(body)
            }
            Storage::Dir(root) => {
                let (data, _) = dir_paths(root, bucket, key)?;
                Self::blocking(move || {
                    use std::io::Read;
                    let file = match std::fs::File::open(&data) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(BackendError::NotFound { resource: name })
                        }
                        Err(e) => return Err(io_error(e)),
                    };
                    let size = file.metadata().map_err(io_error)?.len();
                    if size > limit as u64 {
                        return Err(too_large(size));
                    }
                    // Read at most one byte past the limit: a file that grew
                    // since is refused without reading the rest.
                    let cap = (limit as u64).saturating_add(1);
                    let mut buf = Vec::with_capacity(size as usize);
                    file.take(cap).read_to_end(&mut buf).map_err(io_error)?;
                    if buf.len() > limit {
                        return Err(too_large(buf.len() as u64));
                    }
                    Ok(Bytes::from(buf))
                })
                .await
            }
        }
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        self.faults
            .before(Op::Head, &object_name(bucket, key))
            .await?;
        match &self.storage {
            Storage::Memory(map) => {
                check_name(bucket, key, false)?;
                Ok(map
                    .get(&(bucket.to_owned(), key.to_owned()))
                    .map(|e| e.1.clone()))
            }
            Storage::Dir(root) => {
                let (data, meta_path) = dir_paths(root, bucket, key)?;
                Self::blocking(move || {
                    let size = match std::fs::metadata(&data) {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(io_error(e)),
                    };
                    let meta = std::fs::read(&meta_path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(serde_json::Value::Null);
                    Ok(Some(meta_from_json(size, &meta)))
                })
                .await
            }
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BackendError> {
        // The bucket alone is checked: any prefix is a plain string filter.
        check_name(bucket, "-", false)?;
        let mut keys = match &self.storage {
            Storage::Memory(map) => map
                .iter()
                .filter(|e| e.key().0 == bucket && e.key().1.starts_with(prefix))
                .map(|e| e.key().1.clone())
                .collect(),
            Storage::Dir(root) => {
                let base = root.join(bucket);
                if std::fs::symlink_metadata(&base).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(invalid(bucket, prefix, "a symbolic link in the path"));
                }
                let prefix = prefix.to_owned();
                Self::blocking(move || {
                    let mut out = Vec::new();
                    list_dir(&base, &base, &mut out).map_err(io_error)?;
                    out.retain(|k| k.starts_with(&prefix) && !k.ends_with(TMP_SUFFIX));
                    Ok(out)
                })
                .await?
            }
        };
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        match &self.storage {
            Storage::Memory(map) => {
                check_name(bucket, key, false)?;
                map.remove(&(bucket.to_owned(), key.to_owned()));
                Ok(())
            }
            Storage::Dir(root) => {
                let (data, meta_path) = dir_paths(root, bucket, key)?;
                Self::blocking(move || {
                    for p in [&data, &meta_path] {
                        match std::fs::remove_file(p) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                return Err(io_error(e))
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_store() -> (LocalBlobStore, PathBuf) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("ferry-blob-{}-{n}", std::process::id()));
        // A run before this one, under the same pid, may have left it.
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        (
            LocalBlobStore::dir(
                root,
                Arc::new(FaultState::new(super::super::faults::Faults::none())),
            ),
            base,
        )
    }

    fn refused(r: Result<impl std::fmt::Debug, BackendError>) -> bool {
        matches!(r, Err(BackendError::Invalid { .. }))
    }

    #[tokio::test]
    async fn names_that_leave_the_root_are_refused() {
        let (store, base) = dir_store();
        std::fs::write(base.join("secret"), b"password").unwrap();
        for (bucket, key) in [
            ("..", "secret"),
            ("..", "root/../secret"),
            ("b", "../../secret"),
            ("b", "/etc/passwd"),
            ("/tmp", "x"),
            ("", "x"),
            (".meta", "x"),
            ("b", "a\0b"),
            ("b", "a//b"),
            ("b", "./a"),
            ("b", "x.ferry-tmp"),
        ] {
            assert!(
                refused(store.get(bucket, key).await),
                "get {bucket:?} {key:?}"
            );
            assert!(
                refused(store.head(bucket, key).await),
                "head {bucket:?} {key:?}"
            );
            assert!(
                refused(store.delete(bucket, key).await),
                "delete {bucket:?} {key:?}"
            );
            let put = store
                .put(bucket, key, Bytes::from_static(b"x"), ObjectMeta::default())
                .await;
            assert!(refused(put), "put {bucket:?} {key:?}");
        }
        assert!(refused(store.list("..", "").await));
        assert_eq!(std::fs::read(base.join("secret")).unwrap(), b"password");
        // The memory store refuses the same bucket names.
        let mem = LocalBlobStore::memory(Arc::new(FaultState::new(
            super::super::faults::Faults::none(),
        )));
        assert!(refused(mem.get("..", "secret").await));
        assert!(refused(mem.list("", "").await));
    }

    #[tokio::test]
    async fn a_symlink_in_the_store_is_not_followed() {
        let (store, base) = dir_store();
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"password").unwrap();
        std::os::unix::fs::symlink(&outside, base.join("root/linked")).unwrap();
        std::fs::create_dir_all(base.join("root/b")).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("root/b/dir")).unwrap();
        assert!(refused(store.get("linked", "secret").await));
        assert!(refused(store.get("b", "dir/secret").await));
        assert!(refused(store.delete("b", "dir/secret").await));
        assert!(refused(store.list("linked", "").await));
        assert!(store.list("b", "").await.unwrap().is_empty());
        assert!(outside.join("secret").exists());
    }

    #[tokio::test]
    async fn concurrent_writes_never_swap_contents() {
        let (store, _base) = dir_store();
        let store = Arc::new(store);
        // Keys that once shared a temporary file name (`a.ferry-tmp`).
        let mut tasks = Vec::new();
        for round in 0..20 {
            for ext in ["png", "jpg", "json"] {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let body = Bytes::from(format!("{ext}-{round}").repeat(1000));
                    store
                        .put("b", &format!("a.{ext}"), body, ObjectMeta::default())
                        .await
                        .unwrap();
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        for ext in ["png", "jpg", "json"] {
            let got = store.get("b", &format!("a.{ext}")).await.unwrap();
            assert!(
                got.starts_with(ext.as_bytes()),
                "a.{ext} holds another key's bytes"
            );
        }
        assert_eq!(store.list("b", "").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn limited_reads_refuse_large_objects() {
        let (dir, _base) = dir_store();
        let mem = LocalBlobStore::memory(Arc::new(FaultState::new(
            super::super::faults::Faults::none(),
        )));
        for store in [&dir, &mem] {
            let body = Bytes::from(vec![7u8; 1000]);
            store
                .put("b", "k", body, ObjectMeta::default())
                .await
                .unwrap();
            assert_eq!(store.get_limited("b", "k", 1000).await.unwrap().len(), 1000);
            assert!(matches!(
                store.get_limited("b", "k", 999).await,
                Err(BackendError::PayloadTooLarge {
                    actual: 1000,
                    limit: 999
                })
            ));
            assert!(matches!(
                store.get_limited("b", "none", 10).await,
                Err(BackendError::NotFound { .. })
            ));
        }
    }
}
