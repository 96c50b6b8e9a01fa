//! Embeds the browser front-end: every file of `web/dist` (the committed
//! Vite build; `bash scripts/test.sh` rebuilds it and fails on a
//! difference) becomes a static in the binary, so the gateway serves the
//! page with no Node.js and no files beside it.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let dist = manifest.join("../web/dist");
    // Cargo scans a directory named here for any change inside it.
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &mut files)
        .map_err(|e| format!("web/dist ({}): {e}; it is committed: restore it with `git checkout web/dist`, or rebuild it with `cd web && npm ci && npm run build`", dist.display()))?;
    files.sort();
    if !files.iter().any(|f| f.ends_with("index.html")) {
        return Err(format!(
            "{} has no index.html: rebuild it with `cd web && npm ci && npm run build`",
            dist.display()
        )
        .into());
    }
    let mut table = String::from(
        "/// Every file of web/dist: its path as served, and its bytes.\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let served = file
            .strip_prefix(&dist)?
            .to_str()
            .ok_or("a non-UTF-8 file name in web/dist")?;
        let served = served.replace(std::path::MAIN_SEPARATOR, "/");
        let absolute = fs::canonicalize(file)?;
        table.push_str(&format!(
            "    ({:?}, include_bytes!({:?})),\n",
            format!("/{served}"),
            absolute.display().to_string()
        ));
    }
    table.push_str("];\n");
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("web_files.rs"), table)?;
    Ok(())
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
