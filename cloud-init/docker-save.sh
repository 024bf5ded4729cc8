# docker-save.sh: sourced by the image builders (build-demo-image, build-hadoop-image).
# Writes a root filesystem as a one-layer `docker save` tarball without a Docker daemon
# or a registry, reproducibly: sorted entries, fixed mtimes ($epoch), no pax times, so
# the same root gives the same bytes and the same image id.

# image_ref_check REF: dies unless REF is a reference `docker load` tags (it has a tag).
image_ref_check() {
    local ref=$1 last
    case $ref in
    *[!A-Za-z0-9._/:@-]*) die "image reference $ref holds characters outside [A-Za-z0-9._/:@-]" ;;
    esac
    last=${ref##*/}
    case $last in
    *:?*) ;;
    *) die "image reference $ref has no tag (e.g. shoal/demo:1)" ;;
    esac
}

# image_tarball_name REF: the rule of shoal_protocol::image_tarball_name.
image_tarball_name() {
    printf '%s.tar' "$(printf '%s' "$1" | LC_ALL=C sed 's/[^A-Za-z0-9._-]/_/g')"
}

# image_arch: Docker's name for this machine's architecture.
image_arch() {
    case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
    esac
}

# repro_tar OUTPUT DIR [tar options...]: GNU tar, made reproducible. Members are named
# as `docker save` names them (`manifest.json`, `etc/passwd`: no leading `./`), which
# tools reading one member by name (`tar -xOf T manifest.json`) rely on.
repro_tar() {
    local out=$1 dir=$2
    shift 2
    local top=()
    mapfile -t top < <(cd "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
    [ ${#top[@]} -gt 0 ] || die "$dir is empty"
    tar --create --file "$out" --directory "$dir" \
        --sort=name --format=gnu --numeric-owner "$@" \
        --mtime="@$epoch" -- "${top[@]}"
}

# write_docker_save ROOTFS REF CONFIG OUT_DIR WORK [tar options...]: tars ROOTFS into
# the layer, writes the image config ({"config": CONFIG, …}, CONFIG being the JSON of
# Docker's container config: Env, Cmd, …), the manifest, and OUT_DIR/<tarball name>
# atomically. Prints "PATH REF sha256:ID".
write_docker_save() {
    local root=$1 ref=$2 config=$3 out_dir=$4 work=$5
    shift 5
    local image=$work/image layer_hex config_hex created tar_name tmp_out
    tar_name=$(image_tarball_name "$ref")
    mkdir -p "$image"
    chmod 0755 "$image"
    repro_tar "$work/layer.tar" "$root" "$@"
    layer_hex=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir -p "$image/$layer_hex"
    chmod 0755 "$image/$layer_hex"
    mv "$work/layer.tar" "$image/$layer_hex/layer.tar"
    chmod 0644 "$image/$layer_hex/layer.tar"

    created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
    printf '{"architecture":"%s","os":"linux","created":"%s","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"cloud-init/%s"}]}' \
        "$(image_arch)" "$created" "$config" "$layer_hex" "$created" "${PROG:-$(basename "$0")}" >"$work/config.json"
    chmod 0644 "$work/config.json"
    config_hex=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$image/$config_hex.json"

    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
        "$config_hex" "$ref" "$layer_hex" >"$image/manifest.json"
    chmod 0644 "$image/manifest.json"

    mkdir -p "$out_dir"
    tmp_out=$(mktemp "$out_dir/.$tar_name.XXXXXX")
    # The outer tarball holds only our own files: root-owned.
    if ! repro_tar "$tmp_out" "$image" --owner=0 --group=0; then
        rm -f "$tmp_out"
        die "writing $out_dir/$tar_name failed"
    fi
    chmod 0644 "$tmp_out"
    mv "$tmp_out" "$out_dir/$tar_name"
    rm -rf "$image"
    echo "$out_dir/$tar_name $ref sha256:$config_hex"
}
