//! URL rules shared by the services.

/// Whether `url` is plain HTTP to a place only a local service can be: loopback, a private IPv4
/// address, or a single-label host (a compose service). misim takes such URLs where Azure takes
/// only HTTPS (federated credentials' issuers and their key sets), for the issuers tests run.
pub fn is_local_http(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip.is_loopback() || ip.is_private(),
        Err(_) => host == "localhost" || !host.contains('.'),
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_http;

    #[test]
    fn plain_http_issuers_only_where_a_local_one_runs() {
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost/issuer",
            "http://[::1]:9000",
            "http://10.1.2.3",
            "http://192.168.0.5:80",
            "http://oidc:8080",
        ] {
            assert!(is_local_http(local), "{local}");
        }
        for public in [
            "http://issuer.example.com",
            "http://8.8.8.8",
            "https://127.0.0.1",
            "http://",
            "ftp://localhost",
            "http://[2001:db8::1]",
        ] {
            assert!(!is_local_http(public), "{public}");
        }
    }
}
