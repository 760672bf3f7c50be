//! A real Git repository for a test, driven by Debian's `git` as a developer would: a bare
//! repository (the "forge", served over `file://`) and a clone to commit and push from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The author every commit of the test kit carries.
pub const AUTHOR: &str = "Ada Lovelace <ada@example.org>";

/// A bare repository and a working clone of it, in a temporary directory.
pub struct GitRepo {
    _dir: tempfile::TempDir,
    /// The bare repository.
    pub bare: PathBuf,
    /// The working clone commits are made in.
    pub work: PathBuf,
    home: PathBuf,
}

impl GitRepo {
    /// A new bare repository (branch `main`) and its clone.
    pub fn new() -> GitRepo {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("forge.git");
        let work = dir.path().join("work");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let repo = GitRepo {
            bare: bare.clone(),
            work: work.clone(),
            home,
            _dir: dir,
        };
        repo.git(
            None,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                bare.to_str().unwrap(),
            ],
        );
        repo.git(
            None,
            &["init", "--quiet", "--initial-branch=main", work.to_str().unwrap()],
        );
        repo.git(Some(&work), &["remote", "add", "origin", bare.to_str().unwrap()]);
        repo
    }

    /// The repository's `file://` URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Writes a file of the working clone (directories created).
    pub fn write(&self, path: &str, content: &str) {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    /// Removes a file of the working clone.
    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path)).unwrap();
    }

    /// Commits everything in the working clone; the new commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(Some(&self.work), &["add", "--all"]);
        self.git(Some(&self.work), &["commit", "--quiet", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Pushes `main` to the bare repository (`force`: rewriting its history).
    pub fn push(&self, force: bool) {
        let mut args = vec!["push", "--quiet", "origin", "HEAD:refs/heads/main"];
        if force {
            args.push("--force");
        }
        self.git(Some(&self.work), &args);
    }

    /// Commits everything and pushes it; the commit's id.
    pub fn commit_and_push(&self, message: &str) -> String {
        let id = self.commit(message);
        self.push(false);
        id
    }

    /// Moves the working clone's `main` to `commit` (its files too), as `git reset --hard`.
    pub fn reset_hard(&self, commit: &str) {
        self.git(Some(&self.work), &["reset", "--quiet", "--hard", commit]);
    }

    /// The working clone's head.
    pub fn head(&self) -> String {
        self.git(Some(&self.work), &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Runs `git` (Debian's, `/usr/bin/git`, when it is there) with a configuration of its own.
    pub fn git(&self, dir: Option<&Path>, args: &[&str]) -> String {
        let program = if Path::new("/usr/bin/git").exists() {
            "/usr/bin/git"
        } else {
            "git"
        };
        let (name, email) = AUTHOR.split_once(" <").unwrap();
        let email = email.trim_end_matches('>');
        let mut command = Command::new(program);
        command
            .args(args)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", name)
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_COMMITTER_NAME", name)
            .env("GIT_COMMITTER_EMAIL", email);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (Debian package `git`): {e}"));
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Default for GitRepo {
    fn default() -> Self {
        GitRepo::new()
    }
}
