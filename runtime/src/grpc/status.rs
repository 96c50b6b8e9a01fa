//! Status messages meant for end users.
//!
//! A gRPC status message is for the developer who reads logs: it may name
//! files, hosts or internals. When a service refuses a request for a reason
//! its user can act on (an image over a limit, a malformed key), it also
//! attaches the standard `google.rpc.LocalizedMessage` detail, whose text
//! is written for that user. An edge (the HTTP gateway) shows that text and
//! nothing else of an upstream's status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The locale of every user-facing message.
const LOCALE: &str = "en-US";

/// A status whose message is also marked safe to show the end user.
pub fn for_user(code: Code, message: impl Into<String>) -> Status {
    let message = message.into();
    Status::with_error_details(
        code,
        message.clone(),
        ErrorDetails::with_localized_message(LOCALE, message),
    )
}

/// The user-facing message a status carries, if its sender attached one.
pub fn user_message(status: &Status) -> Option<String> {
    status
        .get_details_localized_message()
        .map(|localized| localized.message)
        .filter(|message| !message.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_messages_survive_the_trip_and_plain_statuses_have_none() {
        let status = for_user(Code::InvalidArgument, "the image is too large");
        assert_eq!(status.message(), "the image is too large");
        // Through the wire form, as a client receives it.
        let response: http::Response<()> = status.into_http();
        let received = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(user_message(&received).as_deref(), Some("the image is too large"));
        assert_eq!(user_message(&Status::internal("/var/data: EIO")), None);
    }
}
