#!/usr/bin/env bash
# Fetch a pinned S3Proxy (a real S3-API server) for the `clipserve embed` S3 tests
# (tests/service/corpus/test_s3.py), cached under ~/.cache/clipserve/s3proxy/<version>/.
#
# Why S3Proxy: one self-contained jar from Maven Central (a registry this project reaches),
# run by the JDK already on these machines; it speaks the S3 REST API with real SigV4
# authentication (a wrong secret is refused as SignatureDoesNotMatch), NoSuchBucket, and
# stores objects as plain files (its jclouds `filesystem` backend). versitygw or SeaweedFS
# would be compiled from the Go module proxy first (minutes on 2 shared cores, many modules).
# Verified by sha256 on top of Maven's own checksum. Idempotent; the last stdout line is the
# absolute path of the jar.
set -euo pipefail

VERSION="4.1.0"
SHA256="a4d025969aaf796616ed4b1e2491d87d455ce84bb28cb9db086b2e6aaa68b48d"
URL="https://repo1.maven.org/maven2/org/gaul/s3proxy/$VERSION/s3proxy-$VERSION-jar-with-dependencies.jar"

cache_root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
dest_dir="$cache_root/s3proxy/$VERSION"
dest="$dest_dir/s3proxy.jar"

sha_ok() { [[ -f "$1" ]] && echo "$SHA256  $1" | sha256sum --check --status; }

if ! sha_ok "$dest"; then
  command -v java >/dev/null || { echo "install-s3proxy: java (17+) is required" >&2; exit 1; }
  mkdir -p "$dest_dir"
  echo "install-s3proxy: fetching S3Proxy $VERSION from Maven Central" >&2
  curl -fsSL --retry 3 -o "$dest.tmp.$$" "$URL"
  sha_ok "$dest.tmp.$$" || { rm -f "$dest.tmp.$$"; echo "install-s3proxy: sha256 mismatch" >&2; exit 1; }
  mv "$dest.tmp.$$" "$dest"  # atomic: a concurrent caller never runs a half-written jar
fi

echo "$dest"
