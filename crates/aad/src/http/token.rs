//! `POST /{tenant}/oauth2/token` (v1) and `/{tenant}/oauth2/v2.0/token` (v2).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::error::{Failure, sts_headers};
use super::{RequestContext, read_body};
use crate::error::AadError;
use crate::service::{Aad, Endpoint, TokenGrant};

pub async fn v1(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    token(aad, Endpoint::V1, tenant, headers, body).await
}

pub async fn v2(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    token(aad, Endpoint::V2, tenant, headers, body).await
}

pub async fn not_post(method: Method, headers: HeaderMap) -> Failure {
    RequestContext::from_headers(&headers).fail(AadError::PostOnly(method.to_string()))
}

async fn token(
    aad: Aad,
    endpoint: Endpoint,
    tenant: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let ctx = RequestContext::from_headers(&headers);
    let bytes = read_body(body, &ctx).await?;
    let form = parse_form(&headers, &bytes);
    // The bootstrap admin is the simulator's own control plane (the CLI fetches its tokens to
    // manage faults): plans never hit it, so a plan can always be removed.
    let admin = &aad.bootstrap().client_id;
    let basic = basic_credentials(&headers);
    let from_admin = form
        .iter()
        .any(|(k, v)| k == "client_id" && v.eq_ignore_ascii_case(admin))
        || basic
            .as_ref()
            .is_some_and(|(id, _)| id.eq_ignore_ascii_case(admin));
    if !from_admin && let Some(fault) = aad.faults().hit(None) {
        aad.events().record(
            misim_core::events::Draft::new(
                "aad.fault.injected",
                format!("fault plan {} hit the token endpoint", fault.id),
            )
            .details(json!({"faultId": fault.id, "plan": fault.request})),
        );
        let answer = misim_core::faults::apply(fault.request.action(), |status| {
            ctx.fail(AadError::FaultInjected {
                status,
                id: fault.id.clone(),
            })
            .into_response()
        })
        .await;
        if let Some(response) = answer {
            return Ok(response);
        }
    }

    let grant = aad
        .issue_token(endpoint, &tenant, &form, basic)
        .await
        .map_err(|e| ctx.fail(e))?;
    let mut response = render(endpoint, &grant);
    sts_headers(&mut response, &ctx);
    Ok(response)
}

/// The form fields of a `application/x-www-form-urlencoded` body. Any other body reads as an
/// empty form, so Entra's "must contain the following parameter" answers it.
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Vec::new();
    }
    form_pairs(body)
}

/// The pairs of an `application/x-www-form-urlencoded` body, as `form_urlencoded` reads them
/// (`serde_urlencoded`: empty pairs skipped, `+` a space, percent escapes decoded, invalid UTF-8
/// replaced). A part
/// with no `%` or `+` — a client assertion's kilobyte of base64url and dots — is taken as it
/// is: the general decoder scanned it four times, a couple of percent of the token path.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    let decode = |raw: &[u8]| -> String {
        if !raw.iter().any(|b| *b == b'%' || *b == b'+') {
            return String::from_utf8_lossy(raw).into_owned();
        }
        let spaced: Vec<u8> = raw
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(at) => (decode(&pair[..at]), decode(&pair[at + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (client_secret_basic).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// The v1 answer: every number a string. Fields in alphabetical order, as the `json!` maps this
/// replaced wrote them (a struct serializes without building a map per token).
#[derive(serde::Serialize)]
struct V1Body<'a> {
    access_token: &'a str,
    expires_in: String,
    expires_on: String,
    ext_expires_in: String,
    not_before: String,
    resource: &'a str,
    token_type: &'static str,
}

/// The v2 answer: numbers as numbers, no resource.
#[derive(serde::Serialize)]
struct V2Body<'a> {
    access_token: &'a str,
    expires_in: i64,
    ext_expires_in: i64,
    token_type: &'static str,
}

/// v1 answers with strings and echoes the resource; v2 with numbers only (spec/tokens.md §3.6).
fn render(endpoint: Endpoint, grant: &TokenGrant) -> Response {
    match endpoint {
        Endpoint::V1 => axum::Json(V1Body {
            access_token: &grant.access_token,
            expires_in: grant.expires_in.to_string(),
            expires_on: grant.expires_on.to_string(),
            ext_expires_in: grant.expires_in.to_string(),
            not_before: grant.not_before.to_string(),
            resource: &grant.resource,
            token_type: "Bearer",
        })
        .into_response(),
        Endpoint::V2 => axum::Json(V2Body {
            access_token: &grant.access_token,
            expires_in: grant.expires_in,
            ext_expires_in: grant.expires_in,
            token_type: "Bearer",
        })
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_read_as_form_urlencoded_does() {
        let bodies: [&[u8]; 12] = [
            b"grant_type=client_credentials&client_id=abc&client_assertion=eyJh.eyJ-_0.c2ln",
            b"a=1&&b=2&",
            b"=v&k=&k2",
            b"scope=https%3A%2F%2Fvault.azure.net%2F.default&x=a+b%2Bc",
            b"k=%zz%4&k%3D=v%3D%26",
            b"k=%C3%A9%E2%82%AC&n=%FF%FE",
            b"k=\xff\xfe&bad=\xc3",
            b"k=v=w&=&==",
            b"+=+&%20=%20",
            b"",
            b"&&&",
            b"k=%F0%9F%98%80+%ED%A0%80",
        ];
        for body in bodies {
            let expected: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).expect("the general decoder reads it");
            assert_eq!(
                form_pairs(body),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Raw bytes that are not UTF-8, in a part with and without escapes.
        for body in [
            &[b'k', b'=', 0xff, 0xfe][..],
            &[b'k', b'=', 0xc3, b'%', b'4', b'1'][..],
        ] {
            let expected: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).expect("the general decoder reads it");
            assert_eq!(form_pairs(body), expected);
        }
    }

    #[tokio::test]
    async fn v1_answers_strings_and_the_resource_v2_numbers() {
        let grant = TokenGrant {
            access_token: "eyJ.x.y".into(),
            expires_in: 3599,
            expires_on: 1_800_003_599,
            not_before: 1_800_000_000,
            resource: "https://vault.azure.net".into(),
        };
        let body = |endpoint| {
            let response = render(endpoint, &grant);
            async move {
                let bytes = axum::body::to_bytes(response.into_body(), 4096)
                    .await
                    .expect("body");
                String::from_utf8(bytes.to_vec()).expect("utf-8")
            }
        };
        assert_eq!(
            body(Endpoint::V1).await,
            r#"{"access_token":"eyJ.x.y","expires_in":"3599","expires_on":"1800003599","ext_expires_in":"3599","not_before":"1800000000","resource":"https://vault.azure.net","token_type":"Bearer"}"#
        );
        assert_eq!(
            body(Endpoint::V2).await,
            r#"{"access_token":"eyJ.x.y","expires_in":3599,"ext_expires_in":3599,"token_type":"Bearer"}"#
        );
    }

    #[test]
    fn basic_credentials_are_url_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("id%3Ax:s%2Bcr+t");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().expect("header"),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("id:x".into(), "s+cr t".into()))
        );
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().expect("header"));
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn only_form_bodies_are_read() {
        let mut headers = HeaderMap::new();
        assert!(parse_form(&headers, b"grant_type=x").is_empty());
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .expect("header"),
        );
        assert_eq!(
            parse_form(&headers, b"grant_type=x&a=%20b"),
            vec![("grant_type".into(), "x".into()), ("a".into(), " b".into())]
        );
        assert!(
            parse_form(&headers, &[0xff, 0xfe])
                .iter()
                .all(|(k, _)| k != "grant_type"),
            "invalid UTF-8 never yields parameters"
        );
    }
}
