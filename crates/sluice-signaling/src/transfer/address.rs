//! Data addresses Sluice hands out (its public endpoint) and reads (a consumer's push endpoint).

use crate::messages::DataAddress;

use super::tokens::Grant;

/// The HTTP pull profile.
pub const HTTP_PULL: &str = "https://w3id.org/dspace-sig/profile/http-pull";
/// The HTTP push profile.
pub const HTTP_PUSH: &str = "https://w3id.org/dspace-sig/profile/http-push";

/// The public data URL of a flow.
pub fn data_url(public_base: &str, flow_id: &str) -> String {
    format!(
        "{}/public/flows/{flow_id}/data",
        public_base.trim_end_matches('/')
    )
}

/// The token endpoint.
pub fn token_url(public_base: &str) -> String {
    format!("{}/public/token", public_base.trim_end_matches('/'))
}

/// The address of a provider pull flow: GET with the access token, refreshable.
pub fn pull_address(public_base: &str, grant: &Grant, ttl_secs: u64) -> DataAddress {
    let mut a = DataAddress::new(HTTP_PULL, data_url(public_base, &grant.flow_id))
        .with_property("authorization", grant.access_token.clone())
        .with_property("authType", "bearer")
        .with_property("expiresIn", ttl_secs.to_string())
        .with_property("refreshEndpoint", token_url(public_base));
    if let Some(r) = &grant.refresh_token {
        a = a.with_property("refreshToken", r.clone());
    }
    a
}

/// The address of a consumer push flow: POST with the token.
pub fn push_address(public_base: &str, grant: &Grant) -> DataAddress {
    DataAddress::new(HTTP_PUSH, data_url(public_base, &grant.flow_id))
        .with_property("authorization", grant.access_token.clone())
        .with_property("authType", "bearer")
}

/// An HTTP endpoint given to Sluice, checked: an http(s) URL, https when required.
pub fn checked_endpoint(address: &DataAddress, require_https: bool) -> Result<String, String> {
    let endpoint = address.endpoint.trim();
    let kind = address.endpoint_type.to_ascii_lowercase();
    if !kind.is_empty() && !kind.contains("http") {
        return Err(format!(
            "dataAddress.endpointType {:?} is not supported (only HTTP addresses are)",
            address.endpoint_type
        ));
    }
    let lower = endpoint.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || endpoint.len() < 9 {
        return Err(format!(
            "dataAddress.endpoint {endpoint:?} is not an http(s) URL"
        ));
    }
    if require_https && !lower.starts_with("https://") {
        return Err(format!(
            "dataAddress.endpoint {endpoint:?} must use https (requireHttps is on)"
        ));
    }
    Ok(endpoint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_required_when_asked() {
        let a = DataAddress::new(HTTP_PUSH, "http://x/y");
        let e = checked_endpoint(&a, true).expect_err("http");
        assert!(e.contains("dataAddress.endpoint"), "{e}");
        assert_eq!(checked_endpoint(&a, false).expect("ok"), "http://x/y");
        let s3 = DataAddress::new("AmazonS3", "https://x");
        assert!(checked_endpoint(&s3, false).is_err());
    }
}
