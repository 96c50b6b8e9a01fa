//! The policy as a layer of every gRPC server: the scope each method needs
//! ([`nws_watermark::access`]), the caller's rate limit, and refusals as
//! the standard codes (UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`).

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use nws_watermark::access::{self, Access};
use tonic::{Status, transport::server::TcpConnectInfo};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::policy::{CALLER, CallInfo, Policy, Refusal, record_caller};

/// What a method needs: probes and reflection are open; a method outside
/// the API needs an upload's rights (forgetting a rule never opens one).
fn access_for(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        return Access::Open;
    }
    access::for_method(path).unwrap_or(Access::WRITE)
}

/// The status a refused call ends with; its message is the user's to read.
pub(crate) fn refusal_status(refusal: &Refusal) -> Status {
    let mut details = ErrorDetails::new();
    details.set_localized_message("en-US", refusal.message());
    if let Refusal::Limited { retry_after, .. } = refusal {
        details.set_retry_info(Some(*retry_after));
    }
    Status::with_error_details(refusal.code(), refusal.message(), details)
}

#[derive(Clone)]
pub(crate) struct PolicyLayer {
    pub(crate) policy: Policy,
}

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = Enforced<S>;

    fn layer(&self, inner: S) -> Enforced<S> {
        Enforced {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// A gRPC service behind the policy.
#[derive(Clone)]
pub struct Enforced<S> {
    inner: S,
    policy: Policy,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Enforced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let access = access_for(request.uri().path());
        if access == Access::Open {
            return Box::pin(self.inner.call(request));
        }
        // The ready service goes with this call; the clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|addr| addr.ip());
            let info = CallInfo {
                headers: request.headers(),
                path: request.uri().path(),
                query: None,
                peer,
                signed_links: false,
            };
            match policy.admit(access, &info).await {
                Err(refusal) => Ok(refusal_status(&refusal).into_http()),
                Ok(admitted) => {
                    record_caller(&admitted);
                    let caller = admitted.caller;
                    if let Some(caller) = &caller {
                        request.extensions_mut().insert(caller.clone());
                    }
                    CALLER.scope(caller, inner.call(request)).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Rate, TokenError};
    use nws_watermark::access::RateClass;
    use std::time::Duration;

    #[test]
    fn probes_are_open_and_unknown_methods_are_not() {
        assert_eq!(access_for("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(
            access_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Open
        );
        assert_eq!(access_for("/watermark.v1.Storage/Get"), Access::READ);
        assert_eq!(access_for("/watermark.v1.Storage/Nope"), Access::WRITE);
    }

    #[test]
    fn a_limited_call_says_when_to_retry() {
        let status = refusal_status(&Refusal::Limited {
            class: RateClass::Upload,
            rate: Rate {
                per_second: 2.0,
                burst: 10,
            },
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(1500))
        );
        let status = refusal_status(&Refusal::Unauthenticated(TokenError::Expired));
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            crate::grpc::status::user_message(&status).as_deref(),
            Some("the token has expired")
        );
    }
}
