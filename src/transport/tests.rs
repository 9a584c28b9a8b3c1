//! Unit tests of `transport`.

use super::*;

#[test]
fn classes() {
    let status = |status| SendError::Status {
        status,
        retry_after: None,
        body: String::new(),
    };
    assert_eq!(status(500).class(), Class::Retry);
    assert_eq!(status(503).class(), Class::Retry);
    assert_eq!(status(408).class(), Class::Retry);
    assert_eq!(status(429).class(), Class::Retry);
    assert_eq!(status(413).class(), Class::TooLarge);
    assert_eq!(status(400).class(), Class::Rejected);
    assert_eq!(status(422).class(), Class::Rejected);
    for s in [401, 403, 404, 405, 407, 410, 415] {
        assert_eq!(status(s).class(), Class::Misconfigured, "{s}");
        assert!(status(s).hint().is_some());
    }
    assert_eq!(status(404).to_string(), "answered HTTP 404 Not Found");
    assert_eq!(SendError::Unreachable("x".into()).class(), Class::Retry);
}

#[test]
fn bodies_are_cut_and_their_control_characters_escaped() {
    assert_eq!(printable(b" oops\n", 200), "oops");
    assert_eq!(printable(b"\x1b]0;owned\x07 x", 200), "\\u{1b}]0;owned\\u{7} x");
    assert_eq!(printable(&[b'a'; 300], 200).len(), 203);
    assert_eq!(printable(b"\xff\xfe", 200), "\u{fffd}\u{fffd}");
}

#[test]
fn retry_after_forms() {
    assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon"), None);
}
