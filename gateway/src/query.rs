//! Query strings, read the same way by uploads and transcoded routes.

use crate::error::ApiError;

/// A query string's `name=value` pairs, percent-decoded, in order.
pub fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let malformed = |detail: String| ApiError::BadRequest(format!("malformed query string: {detail}"));
    let uri: http::Uri = format!("/?{}", query.unwrap_or(""))
        .parse()
        .map_err(|e| malformed(format!("{e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| malformed(e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_percent_decoded_in_order() {
        let pairs = pairs(Some("wm_text=NWS%20%C2%A9&wm_position=center")).unwrap();
        assert_eq!(pairs[0], ("wm_text".to_owned(), "NWS ©".to_owned()));
        assert_eq!(pairs[1].1, "center");
        assert!(super::pairs(None).unwrap().is_empty());
    }
}
