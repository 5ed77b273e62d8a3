//! `ArmError`: every way an ARM request fails, rendered in ARM's error envelope
//! (spec/arm.md §1.5) by `http::error`.

#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("The api-version query parameter (?api-version=) is required for all requests.")]
    MissingApiVersion,
    #[error("The api-version '{version}' is invalid. The supported versions are '{supported}'.")]
    InvalidApiVersion {
        version: String,
        supported: &'static str,
    },
    #[error(
        "No registered resource provider found for location 'global' and API version '{version}' for type '{kind}'. The supported api-versions are '{supported}'."
    )]
    NoRegisteredProviderFound {
        version: String,
        kind: &'static str,
        supported: &'static str,
    },
    #[error("Authentication failed. The 'Authorization' header is missing.")]
    AuthenticationMissing,
    #[error("The access token is invalid. {0}")]
    InvalidToken(String),
    #[error(
        "The access token has been obtained for wrong audience or resource '{0}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
    )]
    WrongAudience(String),
    #[error("The access token expiry UTC time '{exp}' is earlier than current UTC time '{now}'.")]
    ExpiredToken { exp: String, now: String },
    #[error(
        "The access token is from the wrong issuer '{0}'. It must match the tenant associated with this subscription."
    )]
    WrongIssuer(String),
    #[error(
        "The client '{oid}' with object id '{oid}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
    )]
    AuthorizationFailed {
        oid: String,
        action: String,
        scope: String,
    },
    #[error("The subscription '{0}' could not be found.")]
    SubscriptionNotFound(String),
    #[error("The provided subscription identifier '{0}' is malformed or invalid.")]
    InvalidSubscriptionId(String),
    #[error("Resource group '{0}' could not be found.")]
    ResourceGroupNotFound(String),
    #[error(
        "The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
    )]
    ResourceNotFound {
        kind: &'static str,
        name: String,
        rg: String,
    },
    #[error("The request content was invalid and could not be deserialized: '{0}'.")]
    InvalidRequestContent(String),
    #[error("The request body is too large.")]
    RequestTooLarge,
    #[error("The 'location' property is required for this definition.")]
    LocationRequired,
    #[error("The resource name '{name}' is invalid. {rule}")]
    InvalidResourceName { name: String, rule: &'static str },
    #[error(
        "Invalid resource group location '{requested}'. The Resource group already exists in location '{existing}'."
    )]
    InvalidResourceGroupLocation { requested: String, existing: String },
    #[error(
        "Invalid resource location '{requested}'. The resource already exists in location '{existing}'."
    )]
    InvalidResourceLocation { requested: String, existing: String },
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("The role assignment already exists.")]
    RoleAssignmentExists,
    #[error("Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")]
    RoleAssignmentUpdateNotPermitted,
    #[error(
        "Principal {oid} does not exist in the directory {tenant}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype"
    )]
    PrincipalNotFound { oid: String, tenant: String },
    #[error("The specified role definition with ID '{0}' does not exist.")]
    RoleDefinitionDoesNotExist(String),
    #[error("The role assignment ID '{0}' is not valid. The role assignment ID must be a GUID.")]
    InvalidRoleAssignmentId(String),
    #[error("The role assignment '{0}' is not found.")]
    RoleAssignmentNotFound(String),
    /// A GET of a role definition that does not exist (a 404, where naming one in an
    /// assignment is a 400).
    #[error("The specified role definition with ID '{0}' does not exist.")]
    RoleDefinitionNotFound(String),
    #[error("Role definition with same name '{0}' already exists.")]
    RoleDefinitionWithSameNameExists(String),
    #[error(
        "There are existing role assignments referencing role (code: RoleDefinitionHasAssignments)."
    )]
    RoleDefinitionHasAssignments,
    #[error("The resource '{0}' does not exist or does not have a system-assigned identity.")]
    SystemIdentityNotFound(String),
    #[error(
        "The resource type could not be found in the namespace for api version. The path '{0}' is not served by misim."
    )]
    InvalidResourceType(String),
    #[error("The requested resource does not support http method '{0}'.")]
    MethodNotAllowed(String),
    #[error(
        "Identity operation for resource '{resource}' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{{\"error\":{{\"code\":\"BadRequest\",\"message\":\"Resource '{identity}' was not found.\"}}}}'.'."
    )]
    FailedIdentityOperation { resource: String, identity: String },
    #[error(
        "The client '{oid}' with object id '{oid}' has permission to perform action 'Microsoft.Compute/virtualMachines/write' on scope '{scope}'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{linked}' or the linked scope(s) are invalid."
    )]
    LinkedAuthorizationFailed {
        oid: String,
        scope: String,
        linked: String,
    },
    #[error("An internal error occurred.")]
    Internal(String),
}

impl From<sqlx::Error> for ArmError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<misim_core::crypto::CryptoError> for ArmError {
    fn from(error: misim_core::crypto::CryptoError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl ArmError {
    /// Status and ARM error code: the one table of ARM's dialect.
    pub fn parts(&self) -> (u16, &'static str) {
        use ArmError::*;
        match self {
            MissingApiVersion => (400, "MissingApiVersionParameter"),
            InvalidApiVersion { .. } => (400, "InvalidApiVersionParameter"),
            NoRegisteredProviderFound { .. } => (400, "NoRegisteredProviderFound"),
            AuthenticationMissing => (401, "AuthenticationFailed"),
            InvalidToken(_) => (401, "InvalidAuthenticationToken"),
            WrongAudience(_) => (401, "InvalidAuthenticationTokenAudience"),
            ExpiredToken { .. } => (401, "ExpiredAuthenticationToken"),
            WrongIssuer(_) => (401, "InvalidAuthenticationTokenTenant"),
            AuthorizationFailed { .. } => (403, "AuthorizationFailed"),
            SubscriptionNotFound(_) => (404, "SubscriptionNotFound"),
            InvalidSubscriptionId(_) => (400, "InvalidSubscriptionId"),
            ResourceGroupNotFound(_) => (404, "ResourceGroupNotFound"),
            ResourceNotFound { .. } => (404, "ResourceNotFound"),
            // spec/arm.md §3.6: a 404; its code is unconfirmed, ARM's usual one is used.
            SystemIdentityNotFound(_) => (404, "ResourceNotFound"),
            InvalidRequestContent(_) => (400, "InvalidRequestContent"),
            RequestTooLarge => (413, "RequestContentTooLarge"),
            LocationRequired => (400, "LocationRequired"),
            InvalidResourceName { .. } => (400, "InvalidResourceName"),
            InvalidResourceGroupLocation { .. } => (409, "InvalidResourceGroupLocation"),
            InvalidResourceLocation { .. } => (409, "InvalidResourceLocation"),
            InvalidParameter(_) => (400, "InvalidParameter"),
            PreconditionFailed(_) => (412, "PreconditionFailed"),
            RoleAssignmentExists => (409, "RoleAssignmentExists"),
            RoleAssignmentUpdateNotPermitted => (409, "RoleAssignmentUpdateNotPermitted"),
            PrincipalNotFound { .. } => (400, "PrincipalNotFound"),
            RoleDefinitionDoesNotExist(_) => (400, "RoleDefinitionDoesNotExist"),
            InvalidRoleAssignmentId(_) => (400, "InvalidRoleAssignmentId"),
            RoleAssignmentNotFound(_) => (404, "RoleAssignmentNotFound"),
            RoleDefinitionWithSameNameExists(_) => (409, "RoleDefinitionWithSameNameExists"),
            RoleDefinitionNotFound(_) => (404, "RoleDefinitionDoesNotExist"),
            RoleDefinitionHasAssignments => (409, "RoleDefinitionHasAssignments"),
            InvalidResourceType(_) => (400, "InvalidResourceType"),
            MethodNotAllowed(_) => (405, "MethodNotAllowed"),
            FailedIdentityOperation { .. } => (400, "FailedIdentityOperation"),
            LinkedAuthorizationFailed { .. } => (403, "LinkedAuthorizationFailed"),
            Internal(_) => (500, "InternalServerError"),
        }
    }
}
