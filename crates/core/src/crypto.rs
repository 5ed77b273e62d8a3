//! RSA keys, X.509 certificates and signatures on aws-lc-rs (ARCHITECTURE.md §6).
//!
//! Key generation (~60 ms for RSA-2048) and signing (0.25–1 ms) are CPU work: async callers run
//! them through [`blocking`] (key generation) or [`signing`] (signatures) so they never stall the
//! runtime's worker threads.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;

use crate::jose::{b64std, b64url};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key generation failed")]
    KeyGeneration,
    #[error("the private key is not a valid PKCS#8 RSA key")]
    BadPrivateKey,
    #[error("signing failed")]
    Signing,
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("the certificate does not hold an RSA public key")]
    NotRsa,
    #[error("a blocking crypto task failed")]
    TaskFailed,
}

/// Runs CPU-bound crypto on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CryptoError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| CryptoError::TaskFailed)
}

/// Runs a signature on the signing threads (one per core) and waits for it.
///
/// A signature is short and frequent, so a queue drained by threads that stay hot costs less
/// than `spawn_blocking`, which under load wakes a fresh blocking thread per signature and lets
/// many of them contend for the cores.
pub async fn signing<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CryptoError> {
    let (done, result) = tokio::sync::oneshot::channel();
    SigningPool::get().submit(Box::new(move || {
        let _ = done.send(work());
    }));
    result.await.map_err(|_| CryptoError::TaskFailed)
}

type Job = Box<dyn FnOnce() + Send>;

struct SigningPool {
    queue: std::sync::Mutex<SigningQueue>,
    ready: std::sync::Condvar,
}

struct SigningQueue {
    jobs: std::collections::VecDeque<Job>,
    /// Threads waiting for work: a submit only signals the condvar when one is.
    idle: usize,
}

impl SigningPool {
    fn get() -> &'static SigningPool {
        static POOL: std::sync::OnceLock<&'static SigningPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let pool: &'static SigningPool = Box::leak(Box::new(SigningPool {
                queue: std::sync::Mutex::new(SigningQueue {
                    jobs: std::collections::VecDeque::new(),
                    idle: 0,
                }),
                ready: std::sync::Condvar::new(),
            }));
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            for i in 0..threads {
                std::thread::Builder::new()
                    .name(format!("misim-sign-{i}"))
                    .spawn(move || pool.work())
                    .expect("cannot start a signing thread");
            }
            pool
        })
    }

    fn submit(&self, job: Job) {
        let someone_waits = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.jobs.push_back(job);
            queue.idle > 0
        };
        // Signalled after the lock is released: a thread woken while the submitter still held
        // it would only block again on the mutex (two more futex calls per signature).
        if someone_waits {
            self.ready.notify_one();
        }
    }

    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.jobs.pop_front() {
                        break job;
                    }
                    queue.idle += 1;
                    queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
                    queue.idle -= 1;
                }
            };
            // A panicking job drops its sender (the caller sees TaskFailed); the thread lives on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}

/// Random bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom only fails when the OS has no entropy source, which would make every
    // other security property moot as well.
    if SystemRandom::new().fill(&mut out).is_err() {
        panic!("the operating system's random source failed");
    }
    out
}

/// An opaque random string for secrets: base64url of `N` random bytes.
pub fn random_secret<const N: usize>() -> String {
    b64url(&random_bytes::<N>())
}

pub fn sha1(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .to_vec()
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Upper-case hex (thumbprints): every certificate assertion names one, so no `format!` per byte.
pub fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Constant-time equality for secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// JWS algorithms Entra accepts in client assertions and issues in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlg {
    Rs256,
    Ps256,
}

impl JwsAlg {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
        }
    }
}

/// An RSA private key with its PKCS#8 encoding (what gets persisted).
#[derive(Clone)]
pub struct RsaKey {
    pair: Arc<KeyPair>,
    pkcs8: Arc<Vec<u8>>,
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RsaKey(<hidden>)")
    }
}

impl RsaKey {
    /// Generates an RSA-2048 key. Slow (tens of ms): call it from a blocking thread.
    pub fn generate() -> Result<Self, CryptoError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| CryptoError::KeyGeneration)?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| CryptoError::KeyGeneration)?
            .as_ref()
            .to_vec();
        Ok(Self {
            pair: Arc::new(pair),
            pkcs8: Arc::new(pkcs8),
        })
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let pair = KeyPair::from_pkcs8(pkcs8).map_err(|_| CryptoError::BadPrivateKey)?;
        Ok(Self {
            pair: Arc::new(pair),
            pkcs8: Arc::new(pkcs8.to_vec()),
        })
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn pkcs8_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// Signs `message` (CPU-bound: about a millisecond).
    pub fn sign(&self, alg: JwsAlg, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let padding: &'static dyn signature::RsaEncoding = match alg {
            JwsAlg::Rs256 => &signature::RSA_PKCS1_SHA256,
            JwsAlg::Ps256 => &signature::RSA_PSS_SHA256,
        };
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(padding, &SystemRandom::new(), message, &mut sig)
            .map_err(|_| CryptoError::Signing)?;
        Ok(sig)
    }

    /// A self-signed certificate for this key, valid in `[not_before, not_after]`.
    pub fn self_signed_certificate(
        &self,
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>, CryptoError> {
        let cert_err = |e: rcgen::Error| CryptoError::Certificate(e.to_string());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.as_slice()),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes::<16>()));
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(cert.der().to_vec())
    }

    /// Signs `header.payload` and returns the compact JWS.
    pub fn sign_jws(
        &self,
        alg: JwsAlg,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, CryptoError> {
        self.sign_compact(
            alg,
            &b64url(header.to_string().as_bytes()),
            claims.to_string().as_bytes(),
        )
    }

    /// Signs a JWS whose header is already base64url-encoded and whose payload is JSON bytes.
    pub fn sign_compact(
        &self,
        alg: JwsAlg,
        encoded_header: &str,
        payload: &[u8],
    ) -> Result<String, CryptoError> {
        let mut jws = String::with_capacity(encoded_header.len() + payload.len() * 4 / 3 + 350);
        jws.push_str(encoded_header);
        jws.push('.');
        jws.push_str(&b64url(payload));
        let sig = self.sign(alg, jws.as_bytes())?;
        jws.push('.');
        jws.push_str(&b64url(&sig));
        Ok(jws)
    }
}

/// A parsed X.509 certificate holding an RSA public key.
#[derive(Clone)]
pub struct RsaCertificate {
    pub der: Vec<u8>,
    /// DER `RSAPublicKey` (what the verifier takes).
    rsa_public_key: Vec<u8>,
    /// The key parsed for each algorithm once, on first use: parsing per verification costs
    /// as much as the verification (Montgomery set-up).
    parsed: Arc<[std::sync::OnceLock<Option<signature::ParsedPublicKey>>; 2]>,
    pub modulus: Vec<u8>,
    pub exponent: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject: String,
}

impl fmt::Debug for RsaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaCertificate")
            .field("subject", &self.subject)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl RsaCertificate {
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        use x509_parser::prelude::*;
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| CryptoError::BadCertificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CryptoError::BadCertificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        let spki = &cert.tbs_certificate.subject_pki;
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CryptoError::NotRsa);
        };
        let strip = |b: &[u8]| -> Vec<u8> {
            let start = b
                .iter()
                .position(|&x| x != 0)
                .unwrap_or(b.len().saturating_sub(1));
            b[start..].to_vec()
        };
        Ok(Self {
            der: der.to_vec(),
            rsa_public_key: spki.subject_public_key.data.to_vec(),
            parsed: Arc::new([std::sync::OnceLock::new(), std::sync::OnceLock::new()]),
            modulus: strip(rsa.modulus),
            exponent: strip(rsa.exponent),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            subject: cert.subject().to_string(),
        })
    }

    /// Accepts DER, base64 of DER, PEM text, or base64 of PEM text: the forms clients and Graph
    /// callers use for `x5c` entries and `keyCredentials[].key`.
    pub fn from_any_encoding(input: &[u8]) -> Result<Self, CryptoError> {
        if let Ok(cert) = Self::from_der(input) {
            return Ok(cert);
        }
        let text = std::str::from_utf8(input)
            .map_err(|_| CryptoError::BadCertificate("not DER, PEM or base64".into()))?;
        if let Some(der) = pem_decode(text) {
            return Self::from_der(&der);
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = crate::jose::b64_lenient(&compact)
            .ok_or_else(|| CryptoError::BadCertificate("not DER, PEM or base64".into()))?;
        if let Ok(cert) = Self::from_der(&bytes) {
            return Ok(cert);
        }
        let inner = std::str::from_utf8(&bytes).ok().and_then(pem_decode);
        match inner {
            Some(der) => Self::from_der(&der),
            None => Err(CryptoError::BadCertificate("not DER, PEM or base64".into())),
        }
    }

    pub fn sha1_thumbprint(&self) -> Vec<u8> {
        sha1(&self.der)
    }

    pub fn sha256_thumbprint(&self) -> Vec<u8> {
        sha256(&self.der)
    }

    /// base64url SHA-1 of the DER: Entra's `kid`/`x5t`.
    pub fn x5t(&self) -> String {
        b64url(&self.sha1_thumbprint())
    }

    pub fn der_b64(&self) -> String {
        b64std(&self.der)
    }

    pub fn verify(&self, alg: JwsAlg, message: &[u8], sig: &[u8]) -> bool {
        let (params, slot): (&'static dyn signature::VerificationAlgorithm, _) = match alg {
            JwsAlg::Rs256 => (&signature::RSA_PKCS1_2048_8192_SHA256, &self.parsed[0]),
            JwsAlg::Ps256 => (&signature::RSA_PSS_2048_8192_SHA256, &self.parsed[1]),
        };
        let parsed = slot.get_or_init(|| {
            UnparsedPublicKey::new(params, &self.rsa_public_key)
                .parse()
                .ok()
        });
        parsed
            .as_ref()
            .is_some_and(|key| key.verify_sig(message, sig).is_ok())
    }
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = b64std(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block of `text`, if any.
pub fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN ")?;
    let after_begin = &text[start..];
    let body_start = after_begin.find('\n')? + 1;
    let body_end = after_begin.find("-----END ")?;
    if body_end < body_start {
        return None;
    }
    let body: String = after_begin[body_start..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    crate::jose::b64_lenient(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signing_threads_sign_many_at_once_and_survive_a_panicking_job() {
        let (key, cert) = key_and_cert();
        // More panics than threads: had one killed its thread, the jobs below would never run.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..=threads {
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                signing(|| -> u8 { panic!("a job that panics") }),
            )
            .await
            .expect("the signing threads answer");
            assert!(matches!(answer, Err(CryptoError::TaskFailed)));
        }
        // More jobs than threads, all answered, each with its own result.
        let jobs: Vec<_> = (0..16u8)
            .map(|i| {
                let key = key.clone();
                tokio::spawn(signing(move || (i, key.sign(JwsAlg::Rs256, &[i]))))
            })
            .collect();
        for (expected, job) in jobs.into_iter().enumerate() {
            let (i, signature) = tokio::time::timeout(std::time::Duration::from_secs(60), job)
                .await
                .expect("the signing threads answer")
                .expect("task")
                .expect("signing thread");
            assert_eq!(usize::from(i), expected);
            assert!(cert.verify(JwsAlg::Rs256, &[i], &signature.expect("signature")));
        }
    }

    fn key_and_cert() -> (RsaKey, RsaCertificate) {
        let key = RsaKey::generate().expect("keygen");
        let now = OffsetDateTime::now_utc();
        let der = key
            .self_signed_certificate(
                "test",
                now - time::Duration::hours(1),
                now + time::Duration::days(1),
            )
            .expect("cert");
        (key, RsaCertificate::from_der(&der).expect("parse"))
    }

    #[test]
    fn hex_is_upper_case_two_digits_per_byte() {
        assert_eq!(hex_upper(&[0x00, 0x0f, 0xa5, 0xff]), "000FA5FF");
        assert_eq!(hex_upper(&[]), "");
    }

    #[test]
    fn sign_and_verify_both_algorithms() {
        let (key, cert) = key_and_cert();
        for alg in [JwsAlg::Rs256, JwsAlg::Ps256] {
            let sig = key.sign(alg, b"hello").expect("sign");
            assert!(cert.verify(alg, b"hello", &sig));
            assert!(!cert.verify(alg, b"hellO", &sig));
        }
        let rs = key.sign(JwsAlg::Rs256, b"x").expect("sign");
        assert!(!cert.verify(JwsAlg::Ps256, b"x", &rs));
    }

    #[test]
    fn certificate_round_trips_through_every_encoding() {
        let (key, cert) = key_and_cert();
        let pem = pem_encode("CERTIFICATE", &cert.der);
        for input in [
            cert.der.clone(),
            pem.clone().into_bytes(),
            cert.der_b64().into_bytes(),
            b64std(pem.as_bytes()).into_bytes(),
        ] {
            let parsed = RsaCertificate::from_any_encoding(&input).expect("parse");
            assert_eq!(parsed.der, cert.der);
        }
        assert!(RsaCertificate::from_any_encoding(b"garbage").is_err());
        assert_eq!(cert.modulus.len(), 256);
        assert_eq!(cert.exponent, vec![1, 0, 1]);
        let again = RsaKey::from_pkcs8(key.pkcs8_der()).expect("pkcs8");
        let sig = again.sign(JwsAlg::Rs256, b"m").expect("sign");
        assert!(cert.verify(JwsAlg::Rs256, b"m", &sig));
    }
}
