//! misim's Azure Resource Manager. This first cut owns the seeded subscription (persisted in
//! `arm.db`) and answers every request in ARM's error dialect; resources, the managed-identity
//! lifecycle and RBAC arrive with the ARM issue.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::SqlitePool;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/arm");

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("The api-version query parameter (?api-version=) is required for all requests.")]
    MissingApiVersion,
    #[error("The resource type '{0}' is not served by this simulator yet.")]
    NotServed(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ArmError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingApiVersion => (StatusCode::BAD_REQUEST, "MissingApiVersionParameter"),
            Self::NotServed(_) => (StatusCode::NOT_FOUND, "InvalidResourceType"),
            Self::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"),
        }
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            Self::Database(_) => "An internal error occurred.".to_string(),
            other => other.to_string(),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        arm_headers(&mut response, None);
        response
    }
}

/// Headers ARM sends on every response (spec/arm.md §1.6).
pub fn arm_headers(response: &mut Response, correlation_id: Option<&str>) {
    let headers = response.headers_mut();
    let id = Uuid::new_v4().to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-ms-request-id", v);
    }
    let correlation = correlation_id.map(str::to_string).unwrap_or(id);
    if let Ok(v) = HeaderValue::from_str(&correlation) {
        headers.insert("x-ms-correlation-request-id", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// ARM's persistent identity: the subscription it serves and the tenant that owns it.
#[derive(Debug, Clone)]
pub struct Arm {
    pub subscription_id: String,
    pub tenant_id: String,
}

impl Arm {
    /// Opens ARM on its database, seeding the subscription on first use.
    pub async fn open(pool: &SqlitePool, tenant_id: &str) -> Result<Self, ArmError> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT value FROM arm_settings WHERE key = 'subscription_id'")
                .fetch_optional(pool)
                .await?;
        let subscription_id = match existing {
            Some(id) => id,
            None => {
                let id = Uuid::new_v4().to_string();
                let mut tx = pool.begin().await?;
                for (key, value) in [("subscription_id", id.as_str()), ("tenant_id", tenant_id)] {
                    sqlx::query("INSERT INTO arm_settings (key, value) VALUES (?, ?)")
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                id
            }
        };
        Ok(Self {
            subscription_id,
            tenant_id: tenant_id.to_string(),
        })
    }
}

pub fn router() -> Router {
    Router::new().fallback(|request: Request| async move {
        let has_api_version = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("api-version=")));
        if has_api_version {
            ArmError::NotServed(request.uri().path().to_string())
        } else {
            ArmError::MissingApiVersion
        }
    })
}
