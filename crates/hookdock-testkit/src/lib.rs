//! Test support for hookdock: a fake GitHub server held to GitHub's REST contract.
