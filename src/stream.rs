//! Streams that carry a description first, then bytes: Storage's Get
//! (`ObjectInfo`, then the object) and the Optimizer's results (a header,
//! then the image). The description announces the size, and the bytes must
//! add up to it exactly: a stream that ends short, or runs long, fails
//! instead of passing for the whole object.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, stream};
use tonic::Status;

use crate::pb::{
    GetResponse, ObjectInfo, OptimizeHeader, OptimizeResponse, RenderResponse, get_response,
    optimize_response, render_response,
};

/// Why such a stream could not be read.
#[derive(Debug, Clone)]
pub enum StreamError {
    /// The sender failed the call (or the transport did).
    Status(Status),
    /// The sender broke the stream's rules, e.g. bytes past the announced size.
    Protocol(&'static str),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            StreamError::Protocol(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<Status> for StreamError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// Bytes read from a stream, checked against the size announced.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StreamError>> + Send>>;

/// One message of a described stream.
pub enum Frame<H> {
    Head(H),
    Chunk(Bytes),
}

/// A message type of a described stream.
pub trait Framed {
    /// The description that comes first.
    type Head: Announces;
    /// What the message carries; `None` for a message with no payload.
    fn into_frame(self) -> Option<Frame<Self::Head>>;
}

/// A description that announces how many bytes follow it.
pub trait Announces {
    fn size(&self) -> u64;
}

impl Announces for ObjectInfo {
    fn size(&self) -> u64 {
        self.size
    }
}

impl Announces for OptimizeHeader {
    fn size(&self) -> u64 {
        self.size
    }
}

impl Framed for GetResponse {
    type Head = ObjectInfo;
    fn into_frame(self) -> Option<Frame<ObjectInfo>> {
        Some(match self.payload? {
            get_response::Payload::Info(info) => Frame::Head(info),
            get_response::Payload::Chunk(chunk) => Frame::Chunk(chunk),
        })
    }
}

impl Framed for OptimizeResponse {
    type Head = OptimizeHeader;
    fn into_frame(self) -> Option<Frame<OptimizeHeader>> {
        Some(match self.payload? {
            optimize_response::Payload::Header(header) => Frame::Head(header),
            optimize_response::Payload::Chunk(chunk) => Frame::Chunk(chunk),
        })
    }
}

impl Framed for RenderResponse {
    type Head = OptimizeHeader;
    fn into_frame(self) -> Option<Frame<OptimizeHeader>> {
        Some(match self.payload? {
            render_response::Payload::Header(header) => Frame::Head(header),
            render_response::Payload::Chunk(chunk) => Frame::Chunk(chunk),
        })
    }
}

/// Reads the description that starts `messages`; returns it with the bytes
/// that follow, which fail unless they add up to the size it announced.
pub async fn open<M, S>(mut messages: S) -> Result<(M::Head, ByteStream), StreamError>
where
    M: Framed + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
{
    let head = match messages.next().await.transpose()?.and_then(Framed::into_frame) {
        Some(Frame::Head(head)) => head,
        _ => {
            return Err(StreamError::Protocol(
                "the stream did not start with its description",
            ));
        }
    };
    let size = head.size();
    let chunks = messages.map(|message| match message?.into_frame() {
        Some(Frame::Chunk(chunk)) => Ok(chunk),
        Some(Frame::Head(_)) => Err(StreamError::Protocol("a second description in the stream")),
        None => Err(StreamError::Protocol("a message without a payload")),
    });
    let bytes = stream::unfold((Box::pin(chunks), 0u64), move |(mut chunks, seen)| async move {
        match chunks.next().await {
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                let item = if seen > size {
                    Err(StreamError::Protocol("more bytes than the size announced"))
                } else {
                    Ok(chunk)
                };
                Some((item, (chunks, seen)))
            }
            Some(Err(error)) => Some((Err(error), (chunks, seen))),
            None if seen != size => Some((
                Err(StreamError::Protocol(
                    "the stream ended before the size announced",
                )),
                (chunks, size),
            )),
            None => None,
        }
    });
    Ok((head, Box::pin(bytes)))
}

/// Gathers the `size` bytes announced for `bytes`, refusing sizes over
/// `limit` before reading any. Reading stops at `size`: what the sender does
/// after its last byte (finishing a write, then its status) is left in
/// `bytes`, for [`finish`] to read without anyone waiting.
pub async fn collect(bytes: &mut ByteStream, size: u64, limit: u64) -> Result<Bytes, StreamError> {
    if size > limit {
        return Err(StreamError::Protocol(
            "the size announced is over the reader's limit",
        ));
    }
    let mut gathered = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    while (gathered.len() as u64) < size {
        match bytes.next().await {
            Some(chunk) => gathered.extend_from_slice(&chunk?),
            None => break,
        }
    }
    if gathered.len() as u64 != size {
        return Err(StreamError::Protocol(
            "the bytes sent differ from the size announced",
        ));
    }
    Ok(gathered.freeze())
}

/// Reads a stream past its last byte to its end, so that the call ends the
/// way its sender ended it (its status) rather than cancelled by the reader:
/// `Err` when the sender reported a failure after the bytes (e.g. the
/// optimizer could not keep a result it served).
pub async fn finish(mut rest: ByteStream) -> Result<(), StreamError> {
    while let Some(item) = rest.next().await {
        item?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64) -> GetResponse {
        GetResponse {
            payload: Some(get_response::Payload::Info(ObjectInfo {
                size,
                ..ObjectInfo::default()
            })),
        }
    }

    fn chunk(bytes: &'static [u8]) -> GetResponse {
        GetResponse {
            payload: Some(get_response::Payload::Chunk(Bytes::from_static(bytes))),
        }
    }

    async fn read(messages: Vec<GetResponse>) -> Result<Bytes, StreamError> {
        let (info, mut bytes) = open(stream::iter(messages.into_iter().map(Ok))).await?;
        collect(&mut bytes, info.size, 1024).await
    }

    #[tokio::test]
    async fn bytes_must_add_up_to_the_announced_size() {
        assert_eq!(
            read(vec![info(5), chunk(b"ab"), chunk(b"cde")]).await.unwrap(),
            "abcde"
        );
        assert!(matches!(
            read(vec![info(5), chunk(b"ab")]).await,
            Err(StreamError::Protocol(_))
        ));
        assert!(matches!(
            read(vec![chunk(b"ab")]).await,
            Err(StreamError::Protocol(_))
        ));
        assert!(matches!(
            read(vec![info(2), info(2)]).await,
            Err(StreamError::Protocol(_))
        ));
        assert!(matches!(
            read(vec![info(4096)]).await,
            Err(StreamError::Protocol(_))
        ));
        // Past the size: the stream item fails once the excess is seen.
        let (_, mut bytes) = open(stream::iter([info(2), chunk(b"abc")].into_iter().map(Ok)))
            .await
            .unwrap();
        assert!(bytes.next().await.unwrap().is_err());
    }
}
