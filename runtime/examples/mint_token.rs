//! Mints a signing key and one token for the benches: writes the key's
//! JWKS to the path given, prints a token valid for an hour.
//!   mint_token <jwks path> <RS256|ES256|EdDSA> <scope…>
//! RS256 keys are made by Python's `cryptography` (NWS_TEST_PYTHON).

use nws_runtime::testing::tokens::{self, SigningKey};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [jwks_path, alg, scopes @ ..] = args.as_slice() else {
        eprintln!("usage: mint_token <jwks path> <RS256|ES256|EdDSA> <scope…>");
        std::process::exit(64);
    };
    let key = match alg.as_str() {
        "RS256" => SigningKey::rsa("bench-rsa"),
        "ES256" => SigningKey::ec("bench-ec"),
        "EdDSA" => SigningKey::ed25519("bench-ed"),
        other => {
            eprintln!("unknown algorithm {other}");
            std::process::exit(64);
        }
    };
    std::fs::write(jwks_path, tokens::jwks(&[&key])).expect("the JWKS is written");
    let mut claims = tokens::claims(
        "bench",
        &scopes.join(" "),
        "https://issuer.bench",
        "nws-watermark",
    );
    claims["exp"] = tokens::at(3600).into();
    println!("{}", key.sign(&claims));
}
