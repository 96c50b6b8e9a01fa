//! Streaming an upload into Storage.Put and Optimizer.Optimize at once.
//!
//! The bytes are read once and fanned out through two small bounded
//! channels, so a request holds at most a few chunks in memory whatever
//! the image's size, and the slower upstream paces the client. If anything
//! fails, the upstream calls are dropped, which resets their streams: the
//! Storage service then keeps nothing of a half-sent original.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, stream};
use nws_watermark::{
    chunk, media,
    pb::{
        GetRequest, Namespace, OptimizeHeader, OptimizeOptions, OptimizeRequest, OptimizeResponse,
        PutRequest, PutResponse, get_response, optimize_request, optimize_response, put_request,
    },
};
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

use crate::{
    error::{ApiError, Upstream},
    upstream::Upstreams,
};

/// Chunks in flight per upstream: with 64 KiB chunks, at most 256 KiB per
/// upstream per request waits in memory.
const WINDOW: usize = 4;

const OPTIMIZER_SINK: usize = 0;
const STORAGE_SINK: usize = 1;

/// What goes down a channel to an upstream call. The call's request
/// stream ends only on `End`: if the sender is dropped without it (the
/// client's upload broke, the request was cancelled), the stream never
/// ends cleanly, so dropping the call resets it and the upstream sees an
/// aborted upload rather than a short, complete-looking one.
enum Piece {
    Data(Bytes),
    End,
}

/// The bytes sent down `receiver`, ending only at an explicit `End`.
fn until_end(receiver: mpsc::Receiver<Piece>) -> impl Stream<Item = Bytes> + Send {
    stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Some(Piece::Data(bytes)) => Some((bytes, receiver)),
            Some(Piece::End) => None,
            None => std::future::pending().await,
        }
    })
}

/// What the upstreams made of an upload; `result` streams the image.
pub struct Processed {
    pub header: OptimizeHeader,
    /// The stored original, when the upload was also stored.
    pub original: Option<PutResponse>,
    pub result: Streaming<OptimizeResponse>,
}

/// Where an upload's bytes go besides the optimizer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Store the original in Storage too (a fresh upload).
    Original,
    /// The bytes already come from Storage.
    AlreadyStored,
}

/// Reads `source` once, streaming it to the optimizer (and to storage when
/// `keep` says so), and returns when the optimizer's header and the
/// storage's receipt are both in.
pub async fn process<S>(
    upstreams: &Upstreams,
    options: OptimizeOptions,
    mut source: S,
    keep: Keep,
) -> Result<Processed, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Unpin + Send,
{
    // Judge the bytes before any upstream is bothered.
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
    if media::sniff(&prefix).is_none() {
        return Err(ApiError::UnsupportedMedia);
    }

    let (optimize_tx, optimize_rx) = mpsc::channel::<Piece>(WINDOW);
    let optimize_requests = stream::once(async move {
        OptimizeRequest {
            payload: Some(optimize_request::Payload::Options(options)),
        }
    })
    .chain(until_end(optimize_rx).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk)),
    }));
    let mut optimizer = upstreams.optimizer();
    let optimize = async {
        let mut result = optimizer
            .optimize(upstreams.request(optimize_requests))
            .await
            .map_err(ApiError::from_status(Upstream::Optimizer))?
            .into_inner();
        match result
            .message()
            .await
            .map_err(ApiError::from_status(Upstream::Optimizer))?
        {
            Some(OptimizeResponse {
                payload: Some(optimize_response::Payload::Header(header)),
            }) => Ok((header, result)),
            _ => Err(ApiError::Protocol {
                upstream: Upstream::Optimizer,
                what: "the response did not start with a header",
            }),
        }
    };

    let (put_tx, put) = if keep == Keep::Original {
        let (put_tx, put_rx) = mpsc::channel::<Piece>(WINDOW);
        let put_requests = until_end(put_rx).map(|chunk| PutRequest {
            payload: Some(put_request::Payload::Chunk(chunk)),
        });
        let mut storage = upstreams.storage();
        let request = upstreams.request(put_requests);
        let put = async move {
            storage
                .put(request)
                .await
                .map(|r| Some(r.into_inner()))
                .map_err(ApiError::from_status(Upstream::Storage))
        };
        (Some(put_tx), futures_util::future::Either::Left(put))
    } else {
        (None, futures_util::future::Either::Right(async { Ok(None) }))
    };

    // In the order of OPTIMIZER_SINK and STORAGE_SINK.
    let sinks: Vec<mpsc::Sender<Piece>> = [Some(optimize_tx), put_tx].into_iter().flatten().collect();
    let pump = pump(prefix.freeze(), source, sinks);

    tokio::pin!(optimize, put, pump);
    let mut optimized = None;
    let mut stored: Option<Option<PutResponse>> = None;
    // Once the pump is done: per upstream (optimizer, then storage), whether
    // it received every byte and the end.
    let mut delivered: Option<Vec<bool>> = None;
    let complete = |delivered: &[bool], sink: usize| delivered.get(sink).copied().unwrap_or(false);
    while optimized.is_none() || stored.is_none() {
        tokio::select! {
            result = &mut optimize, if optimized.is_none() => match result {
                Ok(done) if delivered.as_deref().is_some_and(|d| !complete(d, OPTIMIZER_SINK)) => {
                    drop(done);
                    return Err(ApiError::Protocol {
                        upstream: Upstream::Optimizer,
                        what: "it answered before reading the whole upload",
                    });
                }
                Ok(done) => optimized = Some(done),
                Err(error) => {
                    if is_bad_image(&error) {
                        // The optimizer stopped reading, so the pump ends soon.
                        let delivered = match delivered {
                            Some(delivered) => delivered,
                            None => (&mut pump).await.unwrap_or_default(),
                        };
                        if complete(&delivered, STORAGE_SINK) {
                            // The whole upload reached storage but is no image
                            // the optimizer can read: don't keep it.
                            let original = match stored.take() {
                                Some(receipt) => receipt,
                                None => (&mut put).await.ok().flatten(),
                            };
                            if let Some(original) = original {
                                forget_original(upstreams, original).await;
                            }
                        }
                    }
                    return Err(error);
                }
            },
            result = &mut put, if stored.is_none() => stored = Some(result?),
            result = &mut pump, if delivered.is_none() => delivered = Some(result?),
        }
    }
    let (header, result) = optimized.expect("loop ends with a header");
    Ok(Processed {
        header,
        original: stored.expect("loop ends with a receipt"),
        result,
    })
}

/// Runs the optimizer over an original already in Storage.
pub async fn process_stored(
    upstreams: &Upstreams,
    sha256: &str,
    options: OptimizeOptions,
) -> Result<Processed, ApiError> {
    let object = upstreams
        .storage()
        .get(upstreams.request(GetRequest {
            sha256: sha256.to_owned(),
            namespace: Namespace::Originals.into(),
        }))
        .await
        .map_err(ApiError::from_status(Upstream::Storage))?
        .into_inner();
    let bytes = object.filter_map(|message| async move {
        match message {
            Ok(m) => match m.payload {
                Some(get_response::Payload::Chunk(chunk)) => Some(Ok(chunk)),
                _ => None,
            },
            Err(status) => Some(Err(ApiError::from_status(Upstream::Storage)(status))),
        }
    });
    process(upstreams, options, Box::pin(bytes), Keep::AlreadyStored).await
}

/// Copies `source` to every sink, `prefix` first, then marks the end.
/// Stops at the first sink that closes early (its call is failing, and the
/// caller learns why from the call). Returns, per sink, whether it received
/// everything including the end.
async fn pump<S>(prefix: Bytes, mut source: S, sinks: Vec<mpsc::Sender<Piece>>) -> Result<Vec<bool>, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Unpin,
{
    let send_all = |piece: Piece| {
        let sends = sinks.iter().map(move |sink| {
            let piece = match &piece {
                Piece::Data(bytes) => Piece::Data(bytes.clone()),
                Piece::End => Piece::End,
            };
            sink.send(piece)
        });
        async move { futures_util::future::join_all(sends).await }
    };
    let mut next = Some(prefix);
    while let Some(data) = next.take() {
        for piece in chunk::split(data) {
            if send_all(Piece::Data(piece)).await.iter().any(Result::is_err) {
                return Ok(vec![false; sinks.len()]);
            }
        }
        next = source.next().await.transpose()?;
    }
    Ok(send_all(Piece::End).await.iter().map(Result::is_ok).collect())
}

fn is_bad_image(error: &ApiError) -> bool {
    matches!(error, ApiError::Upstream { status, .. } if status.code() == Code::InvalidArgument)
}

async fn forget_original(upstreams: &Upstreams, original: PutResponse) {
    if original.deduplicated {
        return; // stored by an earlier upload: not ours to remove
    }
    let request = upstreams.request(nws_watermark::pb::DeleteRequest {
        sha256: original.sha256.clone(),
        namespace: Namespace::Originals.into(),
    });
    if let Err(status) = upstreams.storage().delete(request).await {
        tracing::warn!(sha256 = %original.sha256, %status, "could not remove an unreadable upload");
    }
}

/// The result's bytes as an HTTP body stream.
pub fn result_bytes(result: Streaming<OptimizeResponse>) -> impl Stream<Item = Result<Bytes, ApiError>> {
    result.filter_map(|message| async move {
        match message {
            Ok(OptimizeResponse {
                payload: Some(optimize_response::Payload::Chunk(chunk)),
            }) => Some(Ok(chunk)),
            Ok(_) => Some(Err(ApiError::Protocol {
                upstream: Upstream::Optimizer,
                what: "a second header in the result stream",
            })),
            Err(status) => Some(Err(ApiError::from_status(Upstream::Optimizer)(status))),
        }
    })
}
