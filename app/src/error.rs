//! What a use case can answer instead of its result. Each variant names the HTTP answer `api`
//! maps it to; nothing here knows HTTP.

use crate::metering::Metered;
use dataplane::sandbox::QueryError;
use domain::dataset::DatasetError;
use domain::onboarding::OnboardingError;
use domain::platform::PlatformError;
use domain::preset::PresetError;
use domain::quota::UsageError;
use domain::tenant::TenantError;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that fails its rules, field by field (422 `validation`).
    #[error("invalid input: {0:?}")]
    Validation(Vec<(String, String)>),
    /// Nothing by that id in the caller's tenant (404 `not-found`).
    #[error("{0}")]
    NotFound(String),
    /// The meter's quota and grace are used up (402 `plan-quota-exceeded`, with the upgrade
    /// link and the quota headers).
    #[error("the plan's quota is used up")]
    QuotaBlocked(Box<Metered>),
    /// A failure that was charged one unit by ADR 015's rule: `cause`'s answer, with the
    /// meter's quota headers.
    #[error("{cause}")]
    Charged {
        cause: Box<Error>,
        metered: Box<Metered>,
    },
    /// The tenant's (or the instance's) share of this work is running (429
    /// `too-many-concurrent`, `Retry-After: 1`).
    #[error("{whose} {limit} {work} running at once; retry when one has finished")]
    TooManyConcurrent {
        work: &'static str,
        limit: usize,
        whose: &'static str,
    },
    /// A query the sandbox refused or stopped (422 `query-not-allowed`, `query-timeout`,
    /// `query-invalid`; a dataset that cannot be loaded is 500).
    #[error(transparent)]
    Query(QueryError),
    /// A body of a media type this use case does not read (415 `unsupported-media-type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A CSV that cannot be read (422 `invalid-csv`, with the line at fault).
    #[error(transparent)]
    Ingest(dataplane::ingest::IngestError),
    /// The tenant aggregate refused (409/404/403 by the error).
    #[error(transparent)]
    Tenant(TenantError),
    /// The dataset aggregate refused (404/409 by the error).
    #[error(transparent)]
    Dataset(DatasetError),
    /// The preset aggregate refused (404/409/422 by the error).
    #[error(transparent)]
    Preset(PresetError),
    /// Billing refused (409 `billing-*` by the error; 404 `not-found` for an unknown invoice;
    /// 422 `validation` on `reason` or `amount`).
    #[error(transparent)]
    Billing(domain::billing::BillingError),
    /// The platform aggregate refused (404/409 by the error).
    #[error(transparent)]
    Platform(PlatformError),
    /// The onboarding records refused a report (422 on its field).
    #[error(transparent)]
    Onboarding(OnboardingError),
    /// The usage aggregate refused the units (422 on `units`).
    #[error(transparent)]
    Usage(UsageError),
    /// The store failed (503 with `Retry-After`, 409 for a conflict; see `api::problem`).
    #[error(transparent)]
    Store(StoreError),
    /// A stored event this build cannot read back (500; a bug or a missing upcaster).
    #[error("stored event cannot be decoded: {0}")]
    Decode(String),
    /// A request that contradicts the state it meets (409 with `slug`).
    #[error("{detail}")]
    Conflict { slug: &'static str, detail: String },
    /// Credentials that do not prove who the caller is, such as a refused ID token (401 with
    /// `slug`).
    #[error("{detail}")]
    Unauthorized { slug: &'static str, detail: String },
    /// A caller who may not do this (403 with `slug`).
    #[error("{detail}")]
    Forbidden { slug: &'static str, detail: String },
    /// Other writers kept winning the stream (409 `busy`; the client may retry).
    #[error("the resource kept changing while we tried; retry the request")]
    Busy,
    /// A `min_position` beyond the log's head (404 `position-not-written`).
    #[error("min_position {position} is beyond the last position written ({head})")]
    PositionNotWritten { position: u64, head: u64 },
    /// A position written but not applied here yet (503 `not-caught-up`, `Retry-After: 1`).
    #[error("position {position} is not applied yet; retry shortly")]
    NotCaughtUp { position: u64 },
    /// Our fault (500), logged where it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// One field's validation error.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        Error::Validation(vec![(field.to_owned(), reason.into())])
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

macro_rules! domain_errors {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(e)
            }
        }
    )*};
}

domain_errors! {
    TenantError => Tenant,
    DatasetError => Dataset,
    PresetError => Preset,
    PlatformError => Platform,
    UsageError => Usage,
    OnboardingError => Onboarding,
    QueryError => Query,
}

impl<E: std::error::Error + Into<Error> + 'static> From<commands::ExecuteError<E>> for Error {
    fn from(e: commands::ExecuteError<E>) -> Self {
        match e {
            commands::ExecuteError::Domain(d) => d.into(),
            commands::ExecuteError::Store(s) => Error::Store(s),
            commands::ExecuteError::Decode(d) => {
                tracing::error!(error = %d, "stored event cannot be decoded");
                Error::Decode(d.to_string())
            }
            commands::ExecuteError::TooManyConflicts { .. } => Error::Busy,
        }
    }
}
