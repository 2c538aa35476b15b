//! The errors the API answers with, in the restJson1 shape AWS SDKs parse: the HTTP status of
//! the error shape in the service model, an `x-amzn-ErrorType` header naming the exception and a
//! JSON body `{"message": "..."}`. botocore reads the code from that header first, so
//! `ClientError.response["Error"]["Code"]` is the exception name.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Generates the enum, its wire code and its HTTP status from one table so they cannot drift.
macro_rules! api_errors {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, $status:literal; )*) => {
        /// An error of the Image Builder API, with the message the caller sees.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum ApiError {
            $( $(#[$doc])* #[error("{code}: {0}", code = $code)] $variant(String), )*
        }

        impl ApiError {
            /// The exception name: the `x-amzn-ErrorType` header, the SDK's error code.
            pub fn code(&self) -> &'static str {
                match self { $( ApiError::$variant(_) => $code, )* }
            }

            /// The HTTP status (from the service model's error shapes where it has one).
            pub fn status(&self) -> StatusCode {
                let status: u16 = match self { $( ApiError::$variant(_) => $status, )* };
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }

            /// The message of the JSON body.
            pub fn message(&self) -> &str {
                match self { $( ApiError::$variant(message) => message, )* }
            }

            /// Every exception name this enum can answer with (for tests and documentation).
            pub const ALL_CODES: &'static [&'static str] = &[$( $code, )*];
        }
    };
}

api_errors! {
    // The error shapes of imagebuilder-service-2.json, with their `httpStatusCode`.
    /// A resource the request names does not exist.
    ResourceNotFound => "ResourceNotFoundException", 404;
    /// A parameter is not valid.
    InvalidParameter => "InvalidParameterException", 400;
    /// A parameter value is not valid.
    InvalidParameterValue => "InvalidParameterValueException", 400;
    /// Parameters that cannot be used together.
    InvalidParameterCombination => "InvalidParameterCombinationException", 400;
    /// The resource is used by another one and cannot be changed or deleted.
    ResourceInUse => "ResourceInUseException", 400;
    /// A resource with this name and version exists.
    ResourceAlreadyExists => "ResourceAlreadyExistsException", 400;
    /// Another resource depends on this one.
    ResourceDependency => "ResourceDependencyException", 400;
    /// The semantic version is not valid where it is used.
    InvalidVersionNumber => "InvalidVersionNumberException", 400;
    /// The caller's policies do not allow the action on the resource.
    AccessDenied => "AccessDeniedException", 403;
    /// The caller may not use this resource at all.
    Forbidden => "ForbiddenException", 403;
    /// A client error that no more precise exception describes.
    Client => "ClientException", 400;
    /// The request is not valid (malformed JSON, missing member...).
    InvalidRequest => "InvalidRequestException", 400;
    /// A pagination token that kiln did not issue, or for another query.
    InvalidPaginationToken => "InvalidPaginationTokenException", 400;
    /// A client token reused with different parameters.
    IdempotentParameterMismatch => "IdempotentParameterMismatchException", 400;
    /// Too many calls of this operation.
    CallRateLimitExceeded => "CallRateLimitExceededException", 429;
    /// Too many requests overall.
    TooManyRequests => "TooManyRequestsException", 429;
    /// A quota would be exceeded.
    ServiceQuotaExceeded => "ServiceQuotaExceededException", 402;
    /// kiln failed; the caller did nothing wrong.
    Service => "ServiceException", 500;
    /// kiln cannot answer now (shutting down, store unavailable).
    ServiceUnavailable => "ServiceUnavailableException", 503;

    // Not in the model: the common errors every AWS API documents, with their statuses from
    // the Image Builder API reference ("Common Errors"), and the three kiln needs for requests
    // the model does not describe.
    /// No Authorization header and no X-Amz-Algorithm query parameter.
    MissingAuthenticationToken => "MissingAuthenticationToken", 403;
    /// The signature's parameters are missing or malformed.
    IncompleteSignature => "IncompleteSignature", 400;
    /// The access key id is unknown (or disabled), or the session token is not valid.
    InvalidClientTokenId => "InvalidClientTokenId", 403;
    /// The signature is not the one the secret key gives for this request.
    SignatureDoesNotMatch => "SignatureDoesNotMatch", 403;
    /// The request's date is outside the allowed clock skew, or a presigned URL has expired.
    RequestExpired => "RequestExpired", 400;
    /// No operation of the service has this method and path.
    InvalidAction => "InvalidAction", 400;
    /// The operation exists in Image Builder but kiln does not implement it (yet).
    NotImplemented => "NotImplementedException", 501;
    /// The request body is larger than the server accepts.
    RequestTooLarge => "RequestTooLargeException", 413;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.message() }).to_string();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("x-amzn-ErrorType", HeaderValue::from_static(self.code()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn statuses_follow_the_service_model() {
        assert_eq!(ApiError::ResourceNotFound(String::new()).status(), 404);
        assert_eq!(ApiError::InvalidParameter(String::new()).status(), 400);
        assert_eq!(ApiError::ResourceInUse(String::new()).status(), 400);
        assert_eq!(ApiError::ResourceAlreadyExists(String::new()).status(), 400);
        assert_eq!(ApiError::InvalidVersionNumber(String::new()).status(), 400);
        assert_eq!(ApiError::AccessDenied(String::new()).status(), 403);
        assert_eq!(ApiError::Client(String::new()).status(), 400);
        assert_eq!(ApiError::Service(String::new()).status(), 500);
        assert_eq!(ApiError::InvalidRequest(String::new()).status(), 400);
        assert_eq!(ApiError::IdempotentParameterMismatch(String::new()).status(), 400);
        assert_eq!(ApiError::CallRateLimitExceeded(String::new()).status(), 429);
        assert_eq!(ApiError::ServiceQuotaExceeded(String::new()).status(), 402);
        assert_eq!(ApiError::ServiceUnavailable(String::new()).status(), 503);
        assert_eq!(ApiError::RequestExpired(String::new()).status(), 400);
        assert_eq!(ApiError::SignatureDoesNotMatch(String::new()).status(), 403);
        assert_eq!(ApiError::RequestTooLarge(String::new()).status(), 413);
    }

    /// Every exception of the service model's error shapes that kiln answers with has the
    /// status the model gives it (the model's table, copied from imagebuilder-service-2.json).
    #[test]
    fn codes_are_unique_and_model_statuses_match() {
        let model: &[(&str, u16)] = &[
            ("AccessDeniedException", 403),
            ("CallRateLimitExceededException", 429),
            ("ClientException", 400),
            ("ForbiddenException", 403),
            ("IdempotentParameterMismatchException", 400),
            ("InvalidPaginationTokenException", 400),
            ("InvalidParameterCombinationException", 400),
            ("InvalidParameterException", 400),
            ("InvalidParameterValueException", 400),
            ("InvalidRequestException", 400),
            ("InvalidVersionNumberException", 400),
            ("ResourceAlreadyExistsException", 400),
            ("ResourceDependencyException", 400),
            ("ResourceInUseException", 400),
            ("ResourceNotFoundException", 404),
            ("ServiceException", 500),
            ("ServiceQuotaExceededException", 402),
            ("ServiceUnavailableException", 503),
            ("TooManyRequestsException", 429),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for code in ApiError::ALL_CODES {
            assert!(seen.insert(*code), "{code} twice");
        }
        for (code, _) in model {
            assert!(seen.contains(code), "{code} missing");
        }
        let all = [
            ApiError::AccessDenied(String::new()),
            ApiError::CallRateLimitExceeded(String::new()),
            ApiError::Client(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::IdempotentParameterMismatch(String::new()),
            ApiError::InvalidPaginationToken(String::new()),
            ApiError::InvalidParameterCombination(String::new()),
            ApiError::InvalidParameter(String::new()),
            ApiError::InvalidParameterValue(String::new()),
            ApiError::InvalidRequest(String::new()),
            ApiError::InvalidVersionNumber(String::new()),
            ApiError::ResourceAlreadyExists(String::new()),
            ApiError::ResourceDependency(String::new()),
            ApiError::ResourceInUse(String::new()),
            ApiError::ResourceNotFound(String::new()),
            ApiError::Service(String::new()),
            ApiError::ServiceQuotaExceeded(String::new()),
            ApiError::ServiceUnavailable(String::new()),
            ApiError::TooManyRequests(String::new()),
        ];
        for (error, (code, status)) in all.iter().zip(model) {
            assert_eq!(error.code(), *code);
            assert_eq!(error.status().as_u16(), *status, "{code}");
        }
    }

    #[tokio::test]
    async fn renders_the_rest_json_error_shape() {
        let response = ApiError::ResourceNotFound("image x does not exist".into()).into_response();
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["x-amzn-errortype"], "ResourceNotFoundException");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json, serde_json::json!({"message": "image x does not exist"}));
    }

    #[test]
    fn display_names_the_code() {
        let error = ApiError::AccessDenied("no".into());
        assert_eq!(error.to_string(), "AccessDeniedException: no");
        assert_eq!(error.message(), "no");
    }
}
