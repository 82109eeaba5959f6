//! The web page (`assim-web`) on the API's listener: [`crate::api::router`] merges its routes
//! (`/`, `/hosts`, `/topology`, `/events`, `/static/…`) before the access guard, so the page
//! answers under the same rules as the API (Host header; the token for reads when one is
//! configured, or a signed-in session: [`crate::api_session`]), and its store calls go through
//! the API's read gates and blocking threads. Its "Run now" button runs
//! [`crate::api_checks::run_now`], the code path of `POST /api/v1/checks/run`.

use assim_api::{CheckRun, CmaInfo};
use assim_store::{EventLog, Queries, QueryError};
use axum::http::StatusCode;

use crate::api::ApiState;

impl assim_web::WebSource for ApiState {
    async fn read<T, F>(&self, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Queries) -> Result<T, QueryError> + Send + 'static,
    {
        ApiState::read(self, f).await
    }

    async fn events<T, F>(&self, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn EventLog) -> Result<T, QueryError> + Send + 'static,
    {
        self.with_events(move |log| f(&*log)).await
    }

    fn cma(&self) -> Option<CmaInfo> {
        Some(self.info.clone())
    }

    async fn run_check(
        &self,
        host: String,
        check: String,
    ) -> Result<CheckRun, (StatusCode, String)> {
        let v = crate::api_checks::run_now(self, host, check).await?;
        serde_json::from_value(v).map_err(|e| {
            (StatusCode::BAD_GATEWAY, format!("the nanoprobe's answer is not a check result: {e}"))
        })
    }
}
