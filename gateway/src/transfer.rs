//! Moving bytes between the gateway and the upstreams' streaming calls.
//!
//! Uploads stream through a small bounded channel, so a request holds at
//! most a few chunks in memory whatever the image's size, and the upstream
//! paces the client. A call's request stream ends only after the whole
//! source was sent: if the source fails (the client's upload broke, it was
//! too large, the request was cancelled), the call is dropped and its
//! stream reset, so the upstream sees an aborted upload, never a short one
//! that looks complete.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, stream};
use nws_watermark::{
    chunk, media,
    pb::{
        DeleteRequest, GetRequest, GetResponse, Namespace, ObjectInfo, OptimizeHeader, OptimizeOptions,
        OptimizeRequest, OptimizeResponse, PutOptions, PutRequest, PutResponse, get_response,
        optimize_request, optimize_response, put_request,
    },
};
use tokio::sync::mpsc;
use tonic::Code;

use crate::{
    error::{ApiError, Upstream},
    upstream::Upstreams,
};

/// Chunks in flight per call: with 64 KiB chunks, at most 256 KiB per
/// request waits in memory.
const WINDOW: usize = 4;

/// Largest result the gateway holds to serve and cache. The optimizer's
/// box is at most 8192² pixels, whose PNG can approach this.
const MAX_RESULT_BYTES: u64 = 256 * 1024 * 1024;

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

/// Stores an upload as an original, once its first bytes show an image.
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
    if media::sniff(&prefix).is_none() {
        return Err(ApiError::UnsupportedMedia);
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

/// Keeps a result in Storage under its key.
pub async fn write_result(upstreams: &Upstreams, key: &str, bytes: Bytes) -> Result<PutResponse, ApiError> {
    let options = PutRequest {
        payload: Some(put_request::Payload::Options(PutOptions {
            namespace: Namespace::Results.into(),
            key: key.to_owned(),
            ..PutOptions::default()
        })),
    };
    let chunks = chunk::split(bytes).map(|chunk| PutRequest {
        payload: Some(put_request::Payload::Chunk(chunk)),
    });
    let requests = stream::iter(std::iter::once(options).chain(chunks));
    upstreams
        .storage()
        .put(upstreams.request(requests))
        .await
        .map(tonic::Response::into_inner)
        .map_err(ApiError::from_status(Upstream::Storage))
}

/// Opens a stored object: its description, then its bytes as a stream.
/// The future borrows nothing, so it can run on behalf of other requests.
pub fn open_object(
    upstreams: &Upstreams,
    namespace: Namespace,
    key: &str,
) -> impl Future<Output = Result<(ObjectInfo, ByteSource<'static>), ApiError>> + Send + 'static {
    let mut storage = upstreams.storage();
    let request = upstreams.request(GetRequest {
        sha256: key.to_owned(),
        namespace: namespace.into(),
    });
    async move {
        let mut object = storage
            .get(request)
            .await
            .map_err(ApiError::from_status(Upstream::Storage))?
            .into_inner();
        let info = match object
            .message()
            .await
            .map_err(ApiError::from_status(Upstream::Storage))?
        {
            Some(GetResponse {
                payload: Some(get_response::Payload::Info(info)),
            }) => info,
            _ => {
                return Err(ApiError::Protocol {
                    upstream: Upstream::Storage,
                    what: "the object stream did not start with its info",
                });
            }
        };
        let chunks = object.map(|message| match message {
            Ok(GetResponse {
                payload: Some(get_response::Payload::Chunk(chunk)),
            }) => Ok(chunk),
            Ok(_) => Err(ApiError::Protocol {
                upstream: Upstream::Storage,
                what: "a second info in the object stream",
            }),
            Err(status) => Err(ApiError::from_status(Upstream::Storage)(status)),
        });
        // The stream must add up to the size announced: one that ends short
        // fails instead of passing for the whole object.
        let size = info.size;
        let bytes = stream::unfold((Box::pin(chunks), 0u64), move |(mut chunks, seen)| async move {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    let item = if seen > size {
                        Err(ApiError::Protocol {
                            upstream: Upstream::Storage,
                            what: "the object stream carried more bytes than announced",
                        })
                    } else {
                        Ok(chunk)
                    };
                    Some((item, (chunks, seen)))
                }
                Some(Err(error)) => Some((Err(error), (chunks, seen))),
                None if seen != size => Some((
                    Err(ApiError::Protocol {
                        upstream: Upstream::Storage,
                        what: "the object stream ended before its announced size",
                    }),
                    (chunks, size),
                )),
                None => None,
            }
        });
        let bytes: ByteSource<'static> = Box::pin(bytes);
        Ok((info, bytes))
    }
}

/// A stored object's bytes, whole.
pub async fn read_object(upstreams: &Upstreams, namespace: Namespace, key: &str) -> Result<Bytes, ApiError> {
    let (info, bytes) = open_object(upstreams, namespace, key).await?;
    collect(Upstream::Storage, bytes, info.size).await
}

/// Runs the optimizer over a stored original and returns the whole result.
pub async fn optimize_stored(
    upstreams: Upstreams,
    sha256: String,
    mut options: OptimizeOptions,
) -> Result<(OptimizeHeader, Bytes), ApiError> {
    let (info, original) = open_object(&upstreams, Namespace::Originals, &sha256).await?;
    // Lets the optimizer tell a whole upload from one cut short.
    options.input_size = info.size;
    let mut optimizer = upstreams.optimizer();
    let (header, result) = feed(Upstream::Optimizer, Bytes::new(), original, move |chunks| {
        let first = OptimizeRequest {
            payload: Some(optimize_request::Payload::Options(options)),
        };
        let request = upstreams.request(stream::iter([first]).chain(chunks.map(|chunk| OptimizeRequest {
            payload: Some(optimize_request::Payload::Chunk(chunk)),
        })));
        async move {
            let mut result = optimizer
                .optimize(request)
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
        }
    })
    .await?;
    let chunks = result.map(|message| match message {
        Ok(OptimizeResponse {
            payload: Some(optimize_response::Payload::Chunk(chunk)),
        }) => Ok(chunk),
        Ok(_) => Err(ApiError::Protocol {
            upstream: Upstream::Optimizer,
            what: "a second header in the result stream",
        }),
        Err(status) => Err(ApiError::from_status(Upstream::Optimizer)(status)),
    });
    let bytes = collect(Upstream::Optimizer, Box::pin(chunks), header.size).await?;
    Ok((header, bytes))
}

/// Gathers a stream whose announced size is `size`, holding it to that.
async fn collect(upstream: Upstream, mut chunks: ByteSource<'_>, size: u64) -> Result<Bytes, ApiError> {
    if size > MAX_RESULT_BYTES {
        return Err(ApiError::Protocol {
            upstream,
            what: "it announced an object larger than the gateway holds",
        });
    }
    let mut bytes = BytesMut::with_capacity(size as usize);
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() as u64 > size {
            break;
        }
    }
    if bytes.len() as u64 != size {
        return Err(ApiError::Protocol {
            upstream,
            what: "the bytes sent differ from the size announced",
        });
    }
    Ok(bytes.freeze())
}

/// Whether the optimizer refused the image itself (not a transport error).
pub fn is_bad_image(error: &ApiError) -> bool {
    matches!(error, ApiError::Upstream { upstream: Upstream::Optimizer, status } if status.code() == Code::InvalidArgument)
}

/// Removes an original that turned out to be no image the optimizer can
/// read, unless an earlier upload stored it.
pub async fn forget_original(upstreams: &Upstreams, original: &PutResponse) {
    if original.deduplicated {
        return;
    }
    let request = upstreams.request(DeleteRequest {
        sha256: original.sha256.clone(),
        namespace: Namespace::Originals.into(),
    });
    if let Err(status) = upstreams.storage().delete(request).await {
        tracing::warn!(sha256 = %original.sha256, %status, "could not remove an unreadable upload");
    }
}
