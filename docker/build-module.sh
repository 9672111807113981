#!/bin/sh
# Builds ngx_http_llm_module as a dynamic module for the nginx found on
# PATH and fetches the tiktoken vocabularies it counts with: the build
# stage of docker/Dockerfile, which runs it in the official nginx image.
# docker/ci-check.sh runs the same line outside Docker.
#
#   sh docker/build-module.sh [OUTDIR]
#
# Run from the top of the repository.  OUTDIR (default "out") receives
# ngx_http_llm_module.so, o200k_base.json and cl100k_base.json.
#
# nginx loads a dynamic module only if it was built for the same version
# with the same binary-compatibility flags, so the module is configured
# with the running nginx's own arguments (`nginx -V`; the official image's
# include --with-compat) against the sources of exactly `nginx -v`'s
# version.  Reusing all the arguments rather than --with-compat alone also
# keeps the module's own #if (NGX_HTTP_SSL) code in.
#
# Environment:
#   NGINX_BIN     the nginx to build for (default: nginx; not NGINX,
#                 which nginx itself reads for inherited sockets)
#   NGINX_SRC     an unpacked source tree of that version, copied and
#                 never written to; without it the release tarball is
#                 downloaded from nginx.org and checked against the
#                 SHA-256 below
#   TIKTOKEN_TGZ  where the npm tarball of tiktoken is, or is to be
#                 downloaded to; checked against npm's SHA-512 either way
#   JOBS          parallel make jobs (default: the number of CPUs)
set -eu

out=${1:-out}
nginx=${NGINX_BIN:-nginx}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
top=$(pwd)

# the nginx.org release tarballs this script knows; another version
# stops the build until its checksum is added here (from nginx.org, or
# from Debian's nginx_X.Y.Z.orig.tar.gz, which is the same file)
nginx_sha256() {
    case $1 in
    1.26.3)
        echo 69ee2b237744036e61d24b836668aad3040dda461fe6f570f1787eab570c75aa ;;
    *) return 1 ;;
    esac
}

# the vocabularies' source: the npm package the tests use as reference;
# the SHA-512 is npm's "integrity" of this version, in hex
tiktoken=1.0.22
tiktoken_sha512=3cabf2d6b545d5189b7c5dc99570523f426b730daeab7c977607045ed293627d\
d027f7014411c39eb2798c7932f8c10d67a0c83f0354196a64571fbb8e80a934

die() {
    echo "build-module.sh: $*" >&2
    exit 1
}

if [ ! -f config ] || [ ! -f src/ngx_http_llm_module.c ]; then
    die "run me from the top of the nginx-llm-router repository"
fi

ver=$("$nginx" -v 2>&1 | sed -n 's|^nginx version: nginx/||p')
[ -n "$ver" ] || die "cannot tell the version of \"$nginx\""
args=$("$nginx" -V 2>&1 | sed -n 's/^configure arguments: //p')

case " $args " in
*" --with-compat "*) ;;
*) echo "build-module.sh: note: $nginx was built without --with-compat;" \
        "the module gets its exact arguments" >&2 ;;
esac

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# nginx sources of exactly this version, in a tree of our own: configure
# writes into the tree it runs in
mkdir "$work/nginx"
if [ -n "${NGINX_SRC:-}" ]; then
    (cd "$NGINX_SRC" && tar cf - --exclude=./objs --exclude=./Makefile .) \
        | (cd "$work/nginx" && tar xf -)
else
    sum=$(nginx_sha256 "$ver") \
        || die "no known checksum of nginx-$ver.tar.gz: add it to" \
               "nginx_sha256() in docker/build-module.sh"
    curl -fsSL --retry 3 -o "$work/nginx.tar.gz" \
        "https://nginx.org/download/nginx-$ver.tar.gz"
    echo "$sum  $work/nginx.tar.gz" | sha256sum -c --quiet - \
        || die "nginx-$ver.tar.gz does not match its SHA-256"
    tar xzf "$work/nginx.tar.gz" -C "$work/nginx" --strip-components=1
fi

srcver=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' \
         "$work/nginx/src/core/nginx.h")
[ "$srcver" = "$ver" ] \
    || die "the sources are nginx $srcver, the binary is nginx $ver"

echo "building ngx_http_llm_module for nginx $ver" >&2
(
    cd "$work/nginx"
    # the arguments as nginx -V prints them, quotes included
    eval "set -- $args"
    ./configure "$@" --add-dynamic-module="$top" >configure.log 2>&1 \
        || { tail -30 configure.log >&2; exit 1; }
    make -j"$jobs" -f objs/Makefile modules >make.log 2>&1 \
        || { grep -B2 -A8 -E 'error|Error' make.log | head -60 >&2; exit 1; }
)
cp "$work/nginx/objs/ngx_http_llm_module.so" "$out/"

# the vocabularies: two files of the npm tarball, no npm needed
tgz=${TIKTOKEN_TGZ:-$work/tiktoken.tgz}
if [ ! -s "$tgz" ]; then
    # from the registry npm is configured with
    mkdir -p "$work/pack"
    (cd "$work/pack" && npm pack --silent "tiktoken@$tiktoken" >/dev/null) \
        || die "npm pack tiktoken@$tiktoken failed"
    mv "$work/pack/tiktoken-$tiktoken.tgz" "$tgz"
fi
echo "$tiktoken_sha512  $tgz" | sha512sum -c --quiet - \
    || die "$tgz is not tiktoken $tiktoken as npm publishes it"
for enc in o200k_base cl100k_base; do
    tar xzf "$tgz" -O "package/encoders/$enc.json" >"$out/$enc.json"
done

# the module and the vocabularies load into this very nginx
mkdir -p "$work/t/logs"
cat >"$work/t/nginx.conf" <<END
load_module $out/ngx_http_llm_module.so;
events { }
http {
    llm_tokenizer o200k_base $out/o200k_base.json;
    llm_tokenizer cl100k_base $out/cl100k_base.json;
}
END
"$nginx" -t -q -p "$work/t" -c "$work/t/nginx.conf" -e stderr \
    || die "nginx $ver does not load the module it was built for"

echo "built $out/ngx_http_llm_module.so for nginx $ver" >&2
