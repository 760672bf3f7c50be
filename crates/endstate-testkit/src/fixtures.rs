//! Desired-state documents tests share, as files in `crates/endstate-testkit/fixtures/`, so a
//! change to a shared example is made once.

/// Systems only (shop with storefront and payments, platform, and cache shared by storefront and
/// platform): nothing to execute on hosts, so a change converges.
pub const SYSTEMS: &str = include_str!("../fixtures/systems.yaml");

/// A component of the shared cache system (`cache/memo`, two instances on hosts labelled zone=a).
pub const CACHE_COMPONENT: &str = include_str!("../fixtures/cache-component.yaml");
