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
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt as _, AsyncWriteExt, BufWriter},
};

use crate::{ObjectKey, StorageError};

const OBJECTS_DIR: &str = "originals";
const TEMP_DIR: &str = "tmp";
const WRITE_BUFFER: usize = 256 * 1024;

/// What is known about a stored object without reading all of it.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub size: u64,
    pub created: SystemTime,
    pub media_type: &'static str,
}

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
        for dir in [OBJECTS_DIR, TEMP_DIR] {
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

    /// Starts writing a new object under a temporary name.
    pub async fn begin_put(&self) -> Result<PendingObject, StorageError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join(TEMP_DIR)
            .join(format!("put-{}-{n}", std::process::id()));
        let file = File::create_new(&path)
            .await
            .map_err(StorageError::backend("create a temporary file"))?;
        Ok(PendingObject {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            temp_path: path,
            objects_dir: self.root.join(OBJECTS_DIR),
            committed: false,
        })
    }

    /// Opens an object for reading, with its metadata.
    pub async fn open_object(&self, key: &ObjectKey) -> Result<(ObjectMeta, File), StorageError> {
        let path = object_path(&self.root.join(OBJECTS_DIR), key);
        let mut file = match File::open(&path).await {
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
            media_type: nws_watermark::media::sniff_media_type(&head[..read]),
        };
        Ok((meta, file))
    }

    /// Removes an object; `false` when there was none.
    pub async fn delete(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        let dir = self.root.join(OBJECTS_DIR);
        let path = object_path(&dir, key);
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
}

/// `originals/ab/cd/abcd…`: two levels of 256 directories keep every
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

impl PendingObject {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let file = self.file.as_mut().expect("written before commit");
        file.write_all(bytes)
            .await
            .map_err(StorageError::backend("write an object"))
    }

    /// Makes the object durable under `key`. Returns `true` when an object
    /// with that key already existed (the bytes are identical, since the key
    /// is their hash), in which case nothing new is kept.
    pub async fn commit(mut self, key: &ObjectKey) -> Result<bool, StorageError> {
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
                .map_err(|e| StorageError::backend("link an object")(io::Error::other(e)))?
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
