//! Objects as files under a data directory, written so that a crash at any
//! instant leaves the old state or the new, never a torn object:
//! write a temporary file, fsync it, hard-link it into place (which fails
//! if the object exists, so concurrent writers of the same bytes agree on
//! one winner), fsync the directory, then drop the temporary name.

use std::{
    io::{self, SeekFrom},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use nws_watermark::chunk::CHUNK_SIZE;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt as _, AsyncWriteExt, BufWriter},
};

use super::{Backend, ByteStream, Namespace, ObjectMeta, Upload};
use crate::{ObjectKey, StorageError};

const TEMP_DIR: &str = "tmp";
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    temp_counter: AtomicU64,
}

impl FsStore {
    /// Opens (creating when missing) the store under `data_dir` and removes
    /// temporary files a previous process left behind when it died mid-write.
    pub async fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let root = data_dir.to_path_buf();
        for dir in [
            Namespace::Originals.prefix(),
            Namespace::Results.prefix(),
            TEMP_DIR,
        ] {
            tokio::fs::create_dir_all(root.join(dir))
                .await
                .with_context(|| format!("cannot create {} (NWS_DATA_DIR)", root.join(dir).display()))?;
        }
        let mut stale = tokio::fs::read_dir(root.join(TEMP_DIR)).await?;
        let mut removed = 0usize;
        while let Some(entry) = stale.next_entry().await? {
            tokio::fs::remove_file(entry.path()).await?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed unfinished writes from an earlier run");
        }
        tracing::info!(data_dir = %root.display(), "filesystem store open");
        Ok(Self {
            root,
            temp_counter: AtomicU64::new(0),
        })
    }

    /// A fresh name under `tmp/`; `purpose` tells uploads from health probes.
    fn temp_path(&self, purpose: &str) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(TEMP_DIR)
            .join(format!("{purpose}-{}-{n}", std::process::id()))
    }

    fn path_of(&self, namespace: Namespace, key: &ObjectKey) -> PathBuf {
        object_path(&self.root.join(namespace.prefix()), key)
    }

    async fn open_object(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> Result<(ObjectMeta, File), StorageError> {
        let mut file = match File::open(self.path_of(namespace, key)).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.to_string()));
            }
            Err(e) => return Err(StorageError::backend("open an object")(e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(StorageError::backend("read an object's metadata"))?;
        let mut head = [0u8; nws_watermark::media::SNIFF_LEN];
        let read = read_up_to(&mut file, &mut head)
            .await
            .map_err(StorageError::backend("read an object"))?;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(StorageError::backend("read an object"))?;
        let meta = ObjectMeta {
            size: meta.len(),
            // Objects are immutable, so their modification time is when they were stored.
            created: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            media_type: nws_watermark::media::sniff_media_type(&head[..read]).to_owned(),
        };
        Ok((meta, file))
    }
}

impl Backend for FsStore {
    type Upload = PendingObject;

    /// Always through a temporary file: even with a known key, the final
    /// name must not appear before the bytes are complete and synced.
    async fn begin_put(
        &self,
        namespace: Namespace,
        _key: Option<&ObjectKey>,
    ) -> Result<PendingObject, StorageError> {
        let path = self.temp_path("put");
        let file = File::create_new(&path)
            .await
            .map_err(StorageError::backend("create a temporary file"))?;
        Ok(PendingObject {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp_path: path,
            objects_dir: self.root.join(namespace.prefix()),
            committed: false,
        })
    }

    async fn stat(&self, namespace: Namespace, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        Ok(self.open_object(namespace, key).await?.0)
    }

    async fn get(
        &self,
        namespace: Namespace,
        key: &ObjectKey,
    ) -> Result<(ObjectMeta, ByteStream), StorageError> {
        let (meta, file) = self.open_object(namespace, key).await?;
        // Read on demand, one chunk at a time: a slow reader holds one
        // chunk in memory, never the object.
        let chunks = stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buffer = BytesMut::with_capacity(CHUNK_SIZE);
            match (&mut file).take(CHUNK_SIZE as u64).read_buf(&mut buffer).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buffer.freeze()), Some(file))),
                Err(e) => Some((Err(StorageError::backend("read an object")(e)), None)),
            }
        });
        Ok((meta, Box::pin(chunks)))
    }

    async fn delete(&self, namespace: Namespace, key: &ObjectKey) -> Result<bool, StorageError> {
        let path = self.path_of(namespace, key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let parent = path
                    .parent()
                    .expect("objects live in a fan-out directory")
                    .to_path_buf();
                sync_dir(parent)
                    .await
                    .map_err(StorageError::backend("sync a directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::backend("delete an object")(e)),
        }
    }

    /// The disk is usable when a file can be created, written, synced and
    /// removed where uploads begin.
    async fn check(&self) -> Result<(), StorageError> {
        let path = self.temp_path("health");
        let mut probe = File::create_new(&path)
            .await
            .map_err(StorageError::backend("create a file"))?;
        let written = async {
            probe.write_all(b"health").await?;
            probe.sync_all().await
        }
        .await;
        let removed = tokio::fs::remove_file(&path).await;
        written.map_err(StorageError::backend("write a file"))?;
        removed.map_err(StorageError::backend("remove a file"))
    }
}

/// `originals/ab/cd/abcd…` (or `results/…`): two levels of 256 directories keep every
/// directory small even with hundreds of millions of objects.
fn object_path(objects_dir: &Path, key: &ObjectKey) -> PathBuf {
    let k = key.as_str();
    objects_dir.join(&k[0..2]).join(&k[2..4]).join(k)
}

/// An object being written; dropped before [`PendingObject::commit`], it
/// leaves nothing behind.
pub struct PendingObject {
    file: Option<BufWriter<File>>,
    temp_path: PathBuf,
    objects_dir: PathBuf,
    committed: bool,
}

impl Upload for PendingObject {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        let file = self.file.as_mut().expect("written before commit");
        file.write_all(&bytes)
            .await
            .map_err(StorageError::backend("write an object"))
    }

    async fn commit(mut self, key: &ObjectKey) -> Result<bool, StorageError> {
        let mut file = self.file.take().expect("committed once");
        file.flush()
            .await
            .map_err(StorageError::backend("write an object"))?;
        let file = file.into_inner();
        file.sync_all()
            .await
            .map_err(StorageError::backend("sync an object"))?;
        drop(file);

        let final_path = object_path(&self.objects_dir, key);
        let temp_path = self.temp_path.clone();
        let objects_dir = self.objects_dir.clone();
        let existed =
            tokio::task::spawn_blocking(move || link_into_place(&temp_path, &final_path, &objects_dir))
                .await
                .map_err(StorageError::backend("link an object"))?
                .map_err(StorageError::backend("link an object"))?;
        self.committed = true;
        let _ = std::fs::remove_file(&self.temp_path);
        Ok(existed)
    }
}

impl Drop for PendingObject {
    fn drop(&mut self) {
        if !self.committed {
            // One unlink; not worth a blocking-pool hop.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

fn link_into_place(temp: &Path, final_path: &Path, objects_dir: &Path) -> io::Result<bool> {
    let dir = final_path.parent().expect("objects live in a fan-out directory");
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        // New directory entries are durable only once their parents are synced.
        let mut ancestor = dir.parent();
        while let Some(parent) = ancestor {
            std::fs::File::open(parent)?.sync_all()?;
            if parent == objects_dir {
                break;
            }
            ancestor = parent.parent();
        }
    }
    match std::fs::hard_link(temp, final_path) {
        Ok(()) => {
            std::fs::File::open(dir)?.sync_all()?;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
        Err(e) => Err(e),
    }
}

async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

async fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
