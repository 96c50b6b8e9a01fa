//! A client's upload, streamed into Storage as an original.
//!
//! Uploads stream through a small bounded channel, so a request holds at
//! most a few chunks in memory whatever the image's size, and the upstream
//! paces the client. A call's request stream ends only after the whole
//! source was sent: if the source fails (the client's upload broke, it was
//! too large, the request was cancelled), the call is dropped and its
//! stream reset, so the upstream sees an aborted upload, never a short one
//! that looks complete.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use nws_watermark::{
    chunk, media,
    pb::{PutRequest, PutResponse, put_request},
};
use tokio::sync::mpsc;

use crate::{
    error::{ApiError, Upstream},
    upstream::Upstreams,
};

/// Chunks in flight per call: with 64 KiB chunks, at most 256 KiB per
/// request waits in memory.
const WINDOW: usize = 4;

/// A byte stream read from a client or an upstream.
pub type ByteSource<'a> = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send + 'a>>;

/// What goes down a channel to an upstream call: its stream ends only on
/// `End`, and never when the sender is merely dropped.
enum Piece {
    Data(Bytes),
    End,
}

/// The bytes sent down a channel, ending only at an explicit `End`: when
/// the sender goes without it, the stream stays open until the call
/// holding it is dropped, which resets it.
struct UntilEnd(mpsc::Receiver<Piece>);

impl Stream for UntilEnd {
    type Item = Bytes;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        use std::task::Poll;
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(Piece::Data(bytes))) => Poll::Ready(Some(bytes)),
            Poll::Ready(Some(Piece::End)) => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs the call that `start` makes from a byte stream, feeding it `prefix`
/// then `source`. Returns the call's answer once it has read everything.
async fn feed<T, F>(
    upstream: Upstream,
    prefix: Bytes,
    mut source: ByteSource<'_>,
    start: impl FnOnce(UntilEnd) -> F,
) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let (sender, receiver) = mpsc::channel::<Piece>(WINDOW);
    let call = start(UntilEnd(receiver));
    let pump = async move {
        let mut next = Some(prefix);
        while let Some(data) = next.take() {
            for piece in chunk::split(data) {
                if sender.send(Piece::Data(piece)).await.is_err() {
                    // The call stopped reading: it is failing, and says why.
                    return Ok(false);
                }
            }
            next = source.next().await.transpose()?;
        }
        Ok::<_, ApiError>(sender.send(Piece::End).await.is_ok())
    };
    tokio::pin!(call, pump);
    let mut sent_everything = None;
    loop {
        tokio::select! {
            biased;
            sent = &mut pump, if sent_everything.is_none() => sent_everything = Some(sent?),
            answer = &mut call => {
                return match (answer, sent_everything) {
                    (Err(error), _) => Err(error),
                    (Ok(answer), Some(true)) => Ok(answer),
                    (Ok(_), _) => Err(ApiError::Protocol {
                        upstream,
                        what: "it answered before reading the whole stream",
                    }),
                };
            }
        }
    }
}

/// Stores an upload as an original, once its first bytes show an image the
/// optimizer can read.
pub async fn store_original(
    upstreams: &Upstreams,
    mut source: ByteSource<'_>,
) -> Result<PutResponse, ApiError> {
    // Judge the bytes before Storage is bothered.
    let mut prefix = BytesMut::new();
    while prefix.len() < media::SNIFF_LEN {
        match source.next().await {
            Some(chunk) => prefix.extend_from_slice(&chunk?),
            None => break,
        }
    }
    if prefix.is_empty() {
        return Err(ApiError::BadRequest("the image is empty".to_owned()));
    }
    match media::sniff(&prefix) {
        Some(format) if media::is_input(format) => {}
        detected => {
            return Err(ApiError::UnsupportedMedia {
                detected: detected.map(media::name),
            });
        }
    }
    let mut storage = upstreams.storage();
    feed(Upstream::Storage, prefix.freeze(), source, move |chunks| {
        let request = upstreams.request(chunks.map(|chunk| PutRequest {
            payload: Some(put_request::Payload::Chunk(chunk)),
        }));
        async move {
            storage
                .put(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(ApiError::from_status(Upstream::Storage))
        }
    })
    .await
}
