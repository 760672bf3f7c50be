//! Desired-state documents tests share, as files in `crates/endstate-testkit/fixtures/`, so a
//! change to a shared example is made once.

/// Systems only (shop with storefront and payments, platform, and cache shared by storefront and
/// platform): nothing to execute on hosts, so a change converges.
pub const SYSTEMS: &str = include_str!("../fixtures/systems.yaml");

/// A component of the shared cache system (`cache/memo`, two instances on hosts labelled zone=a).
pub const CACHE_COMPONENT: &str = include_str!("../fixtures/cache-component.yaml");

/// What `describe` shows of a system, the server's view: shop (owners, escalation, links,
/// labels) aggregating storefront and payments; cache (shared by storefront and platform) with
/// `cache/memo` (two instances on zone=a hosts) and actions of every engagement; a drain action
/// of shop.
pub const DESCRIBE_SHOP: &str = include_str!("../fixtures/describe-shop.yaml");

/// What `describe` shows of a system, the CLI's golden view: cache (owners, escalation, links,
/// labels) with a subsystem, platform aggregating by selector, and cache's actions of every
/// engagement.
pub const DESCRIBE_CACHE: &str = include_str!("../fixtures/describe-cache.yaml");

/// A system declared in Git (`checkout`, with `checkout/web` at version `1.0.0`), for the Git
/// source tests: they commit it, and versions of it, to a repository.
pub const GIT_CHECKOUT: &str = include_str!("../fixtures/git-checkout.yaml");
