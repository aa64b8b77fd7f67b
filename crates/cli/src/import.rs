//! `ztmesh admin policy import KIND FILE [-o OUT]`: converts another system's
//! policy file into a native policy. Glue only: read the file, hand the text
//! to `ztmesh_policy::import`, print the warnings, write the result. Nothing
//! is sent to the server; the output is meant to be reviewed, then checked
//! with `ztmesh admin policy validate` and applied with `policy set`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ztmesh_policy::import::{Imported, import_tailscale};

/// Source formats `import` understands.
const KINDS: &str = "tailscale (also for headscale files)";

/// Imports `file` of format `kind` and writes the native policy to `output`
/// (created or replaced), or to standard output. Warnings go to standard
/// error, one per line. Errors name the file and the place in it.
pub fn import_command(kind: &str, file: &Path, output: Option<&Path>) -> Result<()> {
    let imported = import_file(kind, file)?;
    let mut stderr = std::io::stderr().lock();
    for warning in &imported.warnings {
        writeln!(stderr, "warning: {}: {warning}", file.display())
            .context("writing warnings to standard error")?;
    }
    match output {
        Some(output) => {
            if same_file(file, output) {
                bail!(
                    "{}: refusing to overwrite the file being imported; choose another output file",
                    output.display()
                );
            }
            std::fs::write(output, &imported.policy)
                .with_context(|| format!("writing the imported policy to {}", output.display()))?;
            writeln!(
                stderr,
                "wrote {}; review it, then `ztmesh admin policy validate {}`",
                output.display(),
                output.display()
            )
            .context("writing to standard error")?;
        }
        None => std::io::stdout()
            .lock()
            .write_all(imported.policy.as_bytes())
            .context("writing the imported policy to standard output")?,
    }
    Ok(())
}

/// Reads and converts `file`.
fn import_file(kind: &str, file: &Path) -> Result<Imported> {
    let convert = match kind {
        "tailscale" | "headscale" => import_tailscale,
        other => bail!("unknown policy format `{other}`; supported: {KINDS}"),
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the {kind} policy file {}", file.display()))?;
    convert(&text)
        .map_err(|error| anyhow::anyhow!("{}: {error}; nothing was written", file.display()))
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ztmesh-import-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn imports_a_file_to_an_output_file() {
        let dir = scratch("ok");
        let input = dir.join("acl.hujson");
        std::fs::write(
            &input,
            "{\n // web\n \"acls\": [{\"action\": \"accept\", \"src\": [\"alice@x.org\"], \"dst\": [\"tag:web:443\"]},],\n}\n",
        )
        .unwrap();
        let output = dir.join("policy.toml");
        import_command("tailscale", &input, Some(&output)).unwrap();
        let policy = std::fs::read_to_string(&output).unwrap();
        assert!(policy.contains("name = \"acl-0\""), "{policy}");
        ztmesh_policy::Policy::parse(&policy).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_place() {
        let dir = scratch("err");
        let input = dir.join("acl.hujson");
        std::fs::write(&input, "{\"grants\": []}").unwrap();
        let error = import_command("tailscale", &input, None).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!("{}: grants: ", input.display())),
            "{message}"
        );
        assert!(message.ends_with("nothing was written"), "{message}");

        let error = import_command("netbird", &input, None).unwrap_err();
        assert!(format!("{error:#}").contains("unknown policy format `netbird`"));

        let missing = dir.join("missing.hujson");
        let error = import_command("tailscale", &missing, None).unwrap_err();
        assert!(format!("{error:#}").contains("missing.hujson"), "{error:#}");

        std::fs::write(&input, "{\"acls\": []}").unwrap();
        let error = import_command("tailscale", &input, Some(&input)).unwrap_err();
        assert!(
            format!("{error:#}").contains("refusing to overwrite"),
            "{error:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
