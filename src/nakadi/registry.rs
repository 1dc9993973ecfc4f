//! Reading an event type's definition, `GET /event-types/{name}` (Nakadi's schema registry), for
//! the `check` command. The request goes out with the publisher's HTTP client settings and token,
//! so a 401 here is the 401 the publisher would get.

use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use uuid::Uuid;

use super::publisher::{FLOW_ID, error_chain, event_type_url, http_client, read_capped};
use super::response::{Body, MAX_BODY_BYTES, summary};
use super::token::TokenProvider;
use super::{NakadiError, PublisherConfig};

/// The parts of Nakadi's `EventType` the relay's events depend on; the rest is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventTypeDefinition {
    pub name: String,
    pub category: String,
    /// Absent means Nakadi's default, `random`.
    #[serde(default = "random")]
    pub partition_strategy: String,
    #[serde(default)]
    pub partition_key_fields: Vec<String>,
    /// Absent means Nakadi's default, `delete`.
    #[serde(default = "delete")]
    pub cleanup_policy: String,
}

fn random() -> String {
    "random".to_owned()
}

fn delete() -> String {
    "delete".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404: the event type has not been created (or has another name).
    #[error("Nakadi has no event type {name:?} (404 Not Found)")]
    NotFound { name: String },
    /// Any other answer but 200; 401 and 403 are about the token.
    #[error("Nakadi answered {status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("no answer from Nakadi: {0}")]
    Unreachable(String),
    #[error("Nakadi's answer is not an event type: {0}")]
    Malformed(String),
}

/// Reads event types from one Nakadi.
pub struct Registry {
    client: reqwest::Client,
    base_url: String,
    token: TokenProvider,
    request_timeout: std::time::Duration,
}

impl Registry {
    /// Reads the token now, as the publisher does at start.
    ///
    /// # Errors
    /// The token file cannot be read or holds no usable token (the error names the file, never
    /// the token); the HTTP client cannot be built.
    pub fn new(config: &PublisherConfig) -> Result<Registry, NakadiError> {
        // The token first: an error about the URL then means the token was read.
        let token = TokenProvider::new(&config.token)?;
        Ok(Registry {
            client: http_client(config)?,
            base_url: config.base_url.clone(),
            token,
            request_timeout: config.request_timeout,
        })
    }

    pub async fn event_type(&self, name: &str) -> Result<EventTypeDefinition, RegistryError> {
        let url = event_type_url(&self.base_url, name)
            .map_err(|e| RegistryError::Unreachable(e.to_string()))?;
        let mut request = self
            .client
            .get(url)
            .timeout(self.request_timeout)
            .header(FLOW_ID, Uuid::new_v4().to_string());
        if let Some(auth) = self.token.current() {
            request = request.header(AUTHORIZATION, auth.header().clone());
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let body = read_capped(&mut response).await;
        match (status, body) {
            (200, Body::Read(bytes)) => {
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed(e.to_string()))
            }
            (200, Body::TooLarge) => Err(RegistryError::Malformed(format!(
                "a body over {MAX_BODY_BYTES} bytes"
            ))),
            (200, Body::Broken(e)) => Err(RegistryError::Unreachable(e)),
            (404, _) => Err(RegistryError::NotFound {
                name: name.to_owned(),
            }),
            (status, body) => Err(RegistryError::Status {
                status,
                reason: summary(status, &body),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nakadi_defaults_fill_what_the_definition_leaves_out() {
        let definition: EventTypeDefinition = serde_json::from_str(
            r#"{"name":"payments.order-changed","owning_application":"orders","category":"data",
                "enrichment_strategies":["metadata_enrichment"],
                "schema":{"type":"json_schema","schema":"{}"}}"#,
        )
        .unwrap();
        assert_eq!(definition.partition_strategy, "random");
        assert!(definition.partition_key_fields.is_empty());
        assert_eq!(definition.cleanup_policy, "delete");
    }
}
