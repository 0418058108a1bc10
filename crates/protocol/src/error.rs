//! The contract's errors: one code enum (snake_case code + HTTP-like status)
//! and the JSON body every failed request gets.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error code a Switchyard endpoint can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, a missing field, a wrong type, a non-finite number.
    InvalidRequest,
    /// `math`: an operation that does not exist.
    UnknownOperation,
    /// `email-notifier`: the `to` address does not parse.
    InvalidAddress,
    /// The thing asked about does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. replaying a completed payment).
    Conflict,
    /// The request body is over the endpoint's limit.
    TooLarge,
    /// `math`: divide or mod by zero.
    DivisionByZero,
    /// `math`: the result is not a finite number.
    Overflow,
    /// `math`: the operation is not defined for its input (sqrt of a negative).
    DomainError,
    /// A business rule refused the request.
    Rejected,
    /// The site is in maintenance mode.
    Maintenance,
    /// A dependency (NATS, JetStream) is not reachable right now; try again.
    Unavailable,
    /// A bug on our side. The message says what failed.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        Self::InvalidRequest,
        Self::UnknownOperation,
        Self::InvalidAddress,
        Self::NotFound,
        Self::Conflict,
        Self::TooLarge,
        Self::DivisionByZero,
        Self::Overflow,
        Self::DomainError,
        Self::Rejected,
        Self::Maintenance,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The HTTP-like status carried in `Nats-Service-Error-Code`.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::UnknownOperation | Self::InvalidAddress => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::DivisionByZero | Self::Overflow | Self::DomainError | Self::Rejected => 422,
            Self::Internal => 500,
            Self::Maintenance | Self::Unavailable => 503,
        }
    }

    /// The snake_case code carried in the JSON body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnknownOperation => "unknown_operation",
            Self::InvalidAddress => "invalid_address",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::DivisionByZero => "division_by_zero",
            Self::Overflow => "overflow",
            Self::DomainError => "domain_error",
            Self::Rejected => "rejected",
            Self::Maintenance => "maintenance",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The generic code of each status: what a reply that carries only a
    /// status (no JSON body) is taken to mean.
    pub const GENERIC: [ErrorCode; 7] = [
        Self::InvalidRequest,
        Self::NotFound,
        Self::Conflict,
        Self::TooLarge,
        Self::Rejected,
        Self::Internal,
        Self::Unavailable,
    ];

    /// The generic code for an HTTP-like `status`; `internal` for a status
    /// the contract does not use.
    pub fn for_status(status: u16) -> Self {
        Self::GENERIC
            .into_iter()
            .find(|c| c.status() == status)
            .unwrap_or(Self::Internal)
    }

    /// The code for a snake_case string, if it is one of ours.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request: what handlers return and clients receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({status}): {message}", status = .code.status())]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body of the error reply.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }

    /// Rebuilds the error from a reply's JSON body, if it is one.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        let ErrorBody { error } = serde_json::from_slice(body).ok()?;
        Some(Self::new(error.code, error.message))
    }
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// The snake_case error code.
    pub code: ErrorCode,
    /// A human sentence saying what was wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_json_and_strings() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn statuses_match_the_contract() {
        assert_eq!(ErrorCode::InvalidRequest.status(), 400);
        assert_eq!(ErrorCode::UnknownOperation.status(), 400);
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(ErrorCode::Conflict.status(), 409);
        assert_eq!(ErrorCode::TooLarge.status(), 413);
        assert_eq!(ErrorCode::DivisionByZero.status(), 422);
        assert_eq!(ErrorCode::Overflow.status(), 422);
        assert_eq!(ErrorCode::DomainError.status(), 422);
        assert_eq!(ErrorCode::Internal.status(), 500);
        assert_eq!(ErrorCode::Maintenance.status(), 503);
    }

    #[test]
    fn every_status_has_one_generic_code() {
        for code in ErrorCode::ALL {
            let generic = ErrorCode::for_status(code.status());
            assert_eq!(generic.status(), code.status(), "{code}");
            assert!(ErrorCode::GENERIC.contains(&generic));
        }
        assert_eq!(ErrorCode::for_status(422), ErrorCode::Rejected);
        assert_eq!(ErrorCode::for_status(503), ErrorCode::Unavailable);
        assert_eq!(ErrorCode::for_status(418), ErrorCode::Internal);
        let statuses: std::collections::BTreeSet<u16> =
            ErrorCode::GENERIC.iter().map(|c| c.status()).collect();
        assert_eq!(statuses.len(), ErrorCode::GENERIC.len());
    }

    #[test]
    fn error_body_has_the_contract_shape() {
        let err = ServiceError::new(ErrorCode::DivisionByZero, "cannot divide 1 by 0");
        let json = serde_json::to_value(err.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "division_by_zero", "message": "cannot divide 1 by 0"}})
        );
        let bytes = serde_json::to_vec(&err.body()).unwrap();
        assert_eq!(ServiceError::from_body(&bytes), Some(err));
        assert_eq!(ServiceError::from_body(b"{\"result\": 1}"), None);
    }

    #[test]
    fn display_names_code_status_and_message() {
        let err = ServiceError::new(ErrorCode::TooLarge, "body is 70000 bytes");
        assert_eq!(err.to_string(), "too_large (413): body is 70000 bytes");
    }
}
