//! One classifier for every AWS error: what the actors should do with it.
//! Throttling and transient codes are the SDK's own lists (those its retry
//! classifier uses); ferry adds what the SDK's lists leave to status codes
//! (S3's 5xx, KMS throttling under S3) and the codes that decide the rest.

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};

use crate::error::BackendError;

/// Throttling codes the SDK's list does not have: S3 answers these when
/// the KMS key of an encrypted bucket throttles.
const THROTTLING_KMS: &[&str] = &["KMS.ThrottlingException", "KMSThrottling"];

/// Throttling, as the SDK's own retry classifier knows it, and KMS's.
fn throttling(code: &str) -> bool {
    THROTTLING_ERRORS.contains(&code) || THROTTLING_KMS.contains(&code)
}

const ACCESS: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "KMS.AccessDeniedException",
];

/// Temporary credentials that lapsed (a rotation): S3 and SQS say
/// `ExpiredToken`, DynamoDB and STS `ExpiredTokenException`.
const EXPIRED: &[&str] = &["ExpiredToken", "ExpiredTokenException"];

const MISSING: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NotFound",
    "NotFoundException",
    "NoSuchBucket",
    "NoSuchKey",
    "ResourceNotFoundException",
    "404",
];

/// Classifies an error code and message from AWS; `server_fault` marks a
/// failure on the service's side (5xx, or a batch entry without sender
/// fault).
pub(crate) fn classify_code(
    code: &str,
    message: &str,
    server_fault: bool,
    resource: &str,
) -> BackendError {
    let stale_handle = matches!(
        code,
        "ReceiptHandleIsInvalid" | "AWS.SimpleQueueService.MessageNotInflight"
    ) || (code == "InvalidParameterValue"
        && message.to_ascii_lowercase().contains("receipt"));
    if stale_handle {
        BackendError::ReceiptInvalid
    } else if throttling(code) {
        BackendError::Throttled {
            message: format!("{resource}: {code}: {message}"),
        }
    } else if EXPIRED.contains(&code) {
        BackendError::expired_credentials(format!("{resource} ({code}: {message})"))
    } else if ACCESS.contains(&code) {
        BackendError::AccessDenied {
            resource: format!("{resource} ({code}: {message})"),
        }
    } else if MISSING.contains(&code) {
        BackendError::NotFound {
            resource: resource.to_owned(),
        }
    } else if server_fault
        || TRANSIENT_ERRORS.contains(&code)
        || matches!(code, "InternalError" | "ServiceUnavailable")
    {
        BackendError::transient(format!("{resource}: {code}: {message}"))
    } else {
        BackendError::Invalid {
            message: format!("{resource}: {code}: {message}"),
        }
    }
}

/// Classifies any SDK error of any AWS service: throttling, 5xx, timeouts
/// and connection failures are retryable, and so is a response the SDK
/// could not parse (a malformed or unreadable answer, including a 2xx whose
/// headers it refused); a stale receipt handle means the lease is lost; a
/// missing resource or denied access names the resource.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>, resource: &str) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        // A success the SDK could not read (a header it cannot parse, such
        // as metadata a server sent in Latin-1): the response's fault, not
        // the request's — never the message's.
        SdkError::ServiceError(se) if se.raw().status().is_success() => {
            BackendError::transient(format!(
                "{resource}: an unreadable response: {}",
                DisplayErrorContext(&err)
            ))
        }
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or(if se.raw().status().as_u16() == 404 {
                "404"
            } else {
                "Unknown"
            });
            let message = e.message().unwrap_or("");
            classify_code(code, message, se.raw().status().is_server_error(), resource)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BackendError::transient(format!("{resource}: {}", DisplayErrorContext(&err)))
        }
        _ => BackendError::Invalid {
            message: format!("{resource}: {}", DisplayErrorContext(&err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_decisions() {
        assert_eq!(
            classify_code("ReceiptHandleIsInvalid", "", false, "q"),
            BackendError::ReceiptInvalid
        );
        assert_eq!(
            classify_code("InvalidParameterValue", "Value x for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.", false, "q"),
            BackendError::ReceiptInvalid
        );
        assert!(classify_code("RequestThrottled", "", false, "q").is_retryable());
        assert!(classify_code("SlowDown", "", false, "b").is_retryable());
        assert!(classify_code("Weird", "", true, "q").is_retryable());
        assert!(!classify_code("InvalidParameterValue", "bad delay", false, "q").is_retryable());
        assert!(
            matches!(classify_code("AWS.SimpleQueueService.NonExistentQueue", "", false, "queue jobs"),
            BackendError::NotFound { resource } if resource == "queue jobs")
        );
        assert!(matches!(
            classify_code("AccessDenied", "no", false, "s3://b"),
            BackendError::AccessDenied { .. }
        ));
        // Lapsed temporary credentials: what the embedded backend injects.
        for code in ["ExpiredToken", "ExpiredTokenException"] {
            assert_eq!(
                classify_code(code, "expired", false, "s3://b"),
                BackendError::expired_credentials(format!("s3://b ({code}: expired)"))
            );
        }
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(
            status.try_into().expect("a status"),
            aws_sdk_s3::primitives::SdkBody::empty(),
        )
    }

    #[test]
    fn a_response_the_sdk_cannot_read_is_retryable() {
        use aws_sdk_s3::operation::head_object::HeadObjectError;
        // What the SDK answers for a 200 whose metadata header is not UTF-8.
        let unreadable = SdkError::service_error(
            HeadObjectError::unhandled("Failed to parse Metadata from prefix header `x-amz-meta-`"),
            response(200),
        );
        let e = classify(unreadable, "s3://b/k");
        assert!(
            matches!(&e, BackendError::Transient { message } if message.contains("unreadable")),
            "{e:?}"
        );
        let garbled = SdkError::<HeadObjectError, _>::response_error("bad xml", response(200));
        assert!(classify(garbled, "s3://b/k").is_retryable());
        // A refusal without a code is still the request's.
        let refused = SdkError::service_error(HeadObjectError::unhandled("no"), response(400));
        assert!(matches!(
            classify(refused, "s3://b/k"),
            BackendError::Invalid { .. }
        ));
    }
}
