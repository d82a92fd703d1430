//! The standalone audit-bundle verifier. Empty until the audit issue defines the bundle format it
//! checks; it will depend on nothing of Tenantry's but that format.
