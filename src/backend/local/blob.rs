//! The embedded blob store, in memory or in a directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

use super::faults::{FaultState, Op};
use crate::backend::{BlobStore, ObjectMeta};
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

fn dir_paths(root: &Path, bucket: &str, key: &str) -> Result<(PathBuf, PathBuf), BackendError> {
    if key.split('/').any(|p| p == ".." || p.is_empty()) || bucket.contains('/') {
        return Err(BackendError::Invalid {
            message: format!("unsupported object name {}", object_name(bucket, key)),
        });
    }
    Ok((
        root.join(bucket).join(key),
        root.join(".meta").join(bucket).join(format!("{key}.json")),
    ))
}

fn list_dir(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            list_dir(base, &path, out)?;
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
                    let tmp = data.with_extension("ferry-tmp");
                    std::fs::write(&tmp, &body).map_err(io_error)?;
                    std::fs::rename(&tmp, &data).map_err(io_error)
                })
                .await
            }
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, BackendError> {
        let name = object_name(bucket, key);
        self.faults.before(Op::Get, &name).await?;
        match &self.storage {
            Storage::Memory(map) => map
                .get(&(bucket.to_owned(), key.to_owned()))
                .map(|e| e.0.clone())
                .ok_or(BackendError::NotFound { resource: name }),
            Storage::Dir(root) => {
                let (data, _) = dir_paths(root, bucket, key)?;
                Self::blocking(move || match std::fs::read(&data) {
                    Ok(b) => Ok(Bytes::from(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(BackendError::NotFound { resource: name })
                    }
                    Err(e) => Err(io_error(e)),
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
            Storage::Memory(map) => Ok(map
                .get(&(bucket.to_owned(), key.to_owned()))
                .map(|e| e.1.clone())),
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
        let mut keys = match &self.storage {
            Storage::Memory(map) => map
                .iter()
                .filter(|e| e.key().0 == bucket && e.key().1.starts_with(prefix))
                .map(|e| e.key().1.clone())
                .collect(),
            Storage::Dir(root) => {
                let base = root.join(bucket);
                let prefix = prefix.to_owned();
                Self::blocking(move || {
                    let mut out = Vec::new();
                    list_dir(&base, &base, &mut out).map_err(io_error)?;
                    out.retain(|k| k.starts_with(&prefix) && !k.ends_with(".ferry-tmp"));
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
