//! The one place where domain errors become gRPC statuses.

use tonic::Status;

use crate::store::EnrollError;

/// An unexpected failure: logged in full here, reported without detail.
pub fn internal(error: anyhow::Error) -> Status {
    tracing::error!(error = %format!("{error:#}"), "request failed");
    Status::internal("internal server error; the server log has the details")
}

/// Maps an enrollment refusal to the status the device sees.
pub fn status_from_enroll(error: EnrollError) -> Status {
    match error {
        EnrollError::InvalidToken
        | EnrollError::Expired
        | EnrollError::AlreadyUsed
        | EnrollError::LoginRefused => Status::unauthenticated(error.to_string()),
        EnrollError::NameTaken(_) | EnrollError::KeyTaken => {
            Status::already_exists(error.to_string())
        }
        EnrollError::Invalid(_) => Status::invalid_argument(error.to_string()),
        EnrollError::AddressesExhausted(_) => Status::resource_exhausted(error.to_string()),
        EnrollError::Database(e) => internal(e),
    }
}
