//! What a federated identity credential must be wherever it is made: ARM makes them for
//! user-assigned identities, Graph for applications (spec/tokens.md §6.1). Each service words
//! the refusal in its own dialect; the rules are one.

/// The most federated credentials an identity or an application may have.
pub const MAX_CREDENTIALS: usize = 20;
/// The longest issuer, subject, audience (or Graph description), in characters.
pub const MAX_FIELD_CHARS: usize = 600;

/// Names: 3–120 characters, `^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$` (never `.` or `..`, which
/// clients would resolve away in a URL path).
pub fn valid_name(name: &str) -> bool {
    letters_digits_name(name, 120)
}

/// Azure's rule for managed identities' names and their credentials': 3 to `max_len`
/// characters of letters, digits, `-` and `_`, starting with a letter or digit.
pub fn letters_digits_name(name: &str, max_len: usize) -> bool {
    (3..=max_len).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The rule names break, for the message.
pub const NAME_RULE: &str = "Federated identity credential names are 3-120 characters of letters, digits, '-' and '_', starting with a letter or digit.";

/// Issuer, subject and audiences: an https issuer (in misim also plain http to a local issuer)
/// without surrounding whitespace, a subject without wildcards, exactly one audience, each at
/// most 600 characters. The message says what is wrong.
pub fn check_fields(issuer: &str, subject: &str, audiences: &[String]) -> Result<(), &'static str> {
    let issuer_ok = (issuer.starts_with("https://") && issuer.len() > "https://".len())
        || crate::urls::is_local_http(issuer);
    if !issuer_ok || issuer.trim() != issuer {
        return Err(
            "The issuer must be an https URL without leading or trailing whitespace (or, in misim, an http URL of a local issuer: loopback, a private address or a single-label host).",
        );
    }
    if subject.trim().is_empty() || subject.contains('*') {
        return Err("The subject must be a non-empty value without wildcards.");
    }
    if audiences.len() != 1 || audiences[0].trim().is_empty() {
        return Err("The federated identity credential must have exactly one audience.");
    }
    if [issuer, subject, audiences[0].as_str()]
        .iter()
        .any(|f| f.chars().count() > MAX_FIELD_CHARS)
    {
        return Err("Issuer, subject and audience must be at most 600 characters.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azures_rule() {
        for good in ["k8s", "github-main_1", &"n".repeat(120)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "ab",
            ".",
            "..",
            "-ab",
            "_ab",
            "has space",
            "x.y",
            "é-é",
            &"n".repeat(121),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn fields_are_checked() {
        let one = |a: &str| vec![a.to_string()];
        let exchange = one("api://AzureADTokenExchange");
        assert_eq!(
            check_fields("https://issuer.example", "s", &exchange),
            Ok(())
        );
        assert_eq!(
            check_fields("http://127.0.0.1:8090", "s", &exchange),
            Ok(())
        );
        for (issuer, subject, audiences) in [
            ("http://issuer.example.com", "s", exchange.clone()),
            ("https://", "s", exchange.clone()),
            (" https://issuer.example", "s", exchange.clone()),
            ("https://issuer.example", " ", exchange.clone()),
            ("https://issuer.example", "repo:*", exchange.clone()),
            ("https://issuer.example", "s", vec![]),
            ("https://issuer.example", "s", one(" ")),
            ("https://issuer.example", "s", vec!["a".into(), "b".into()]),
            ("https://issuer.example", &"s".repeat(601), exchange.clone()),
        ] {
            assert!(
                check_fields(issuer, subject, &audiences).is_err(),
                "{issuer} {subject} {audiences:?}"
            );
        }
    }
}
