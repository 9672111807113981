#!/bin/sh
# Builds nginx with the module, from Debian's nginx source packages.
#
#   build/nginx.sh [--asan] [--static] 1.22|1.26|1.30
#   build/nginx.sh packaged
#   build/nginx.sh deb
#   build/nginx.sh --fetch 1.22|1.26|1.30
#
# 1.22, 1.26 and 1.30 are the nginx of Debian bookworm, trixie and sid.
# Sources come through apt with a private source list and lists dir
# under .build/apt (build/apt-source.sh), so the system's apt
# configuration is left alone.
# "packaged" builds the module against Debian's own nginx (nginx-dev) and
# is loaded into /usr/sbin/nginx; "deb" builds the Debian package
# (build/deb.sh) and installs it with Debian's nginx, so the tests run
# the installed module and vocabularies.
#
# Prints the env file to source: it sets LLM_NGINX and LLM_MODULE
# (empty for a static build), which the tests and tools read.  --fetch
# only downloads the sources and prints the path of their tarball
# (docker/ci-check.sh builds from it as the Dockerfile would).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
asan=no
static=no
fetch=no

while [ $# -gt 0 ]; do
    case "$1" in
    --asan) asan=yes ;;
    --static) static=yes ;;
    --fetch) fetch=yes ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done

want=${1:-1.22}
jobs=$(nproc 2>/dev/null || echo 2)
out="$top/.build"
mkdir -p "$out"

sh "$top/build/deps.sh" >&2

if [ "$want" = packaged ]; then
    if [ $fetch = yes ]; then
        echo "--fetch takes a version, not packaged" >&2
        exit 2
    fi
    sh "$top/build/deps.sh" nginx nginx-dev >&2
    dir="$out/packaged"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r /usr/share/nginx/src "$dir/src"
    (
        cd "$dir/src"
        # conf_flags is a bash array of Debian's configure flags
        bash -c '. ./conf_flags && ./configure "${NGX_CONF_FLAGS[@]}" \
                    --add-dynamic-module="$0"' "$top" >configure.log 2>&1 \
            || { tail -30 configure.log >&2; exit 1; }
        make -j"$jobs" -f objs/Makefile modules >make.log 2>&1 \
            || { tail -40 make.log >&2; exit 1; }
    )
    cp "$dir/src/objs/ngx_http_llm_module.so" "$dir/"
    cat >"$dir/env" <<END
LLM_NGINX=/usr/sbin/nginx
LLM_MODULE=$dir/ngx_http_llm_module.so
export LLM_NGINX LLM_MODULE
END
    echo "$dir/env"
    exit 0
fi

if [ "$want" = deb ]; then
    # the Debian package, installed into Debian's nginx as a user would
    deb=$(sh "$top/build/deb.sh")
    sh "$top/build/deps.sh" nginx >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    # dpkg, not apt: the same version built again is installed again
    $SUDO dpkg -i "$deb" >&2
    dir="$out/deb"
    cat >"$dir/env" <<END
LLM_NGINX=/usr/sbin/nginx
LLM_MODULE=/usr/lib/nginx/modules/ngx_http_llm_module.so
LLM_VOCAB_DIR=/usr/share/nginx-llm
export LLM_NGINX LLM_MODULE LLM_VOCAB_DIR
END
    echo "$dir/env"
    exit 0
fi

case "$want" in
1.22*) suite=bookworm ;;
1.26*) suite=trixie ;;
1.30*) suite=sid ;;
*) echo "unknown nginx version $want (1.22, 1.26, 1.30, packaged or deb)" >&2
   exit 2 ;;
esac

# the upstream tarball of Debian's nginx source package of that suite
tarball=$(sh "$top/build/apt-source.sh" "$suite" nginx "$want") || exit $?
upstream=$(basename "$tarball")
upstream=${upstream#nginx_}
upstream=${upstream%.orig.tar.*}

if [ $fetch = yes ]; then
    echo "$tarball"
    exit 0
fi

name="nginx-$upstream"
[ $asan = yes ] && name="$name-asan"
[ $static = yes ] && name="$name-static"
dir="$out/$name"

# up to date: nothing in the addon is newer than the last build
if [ -f "$dir/env" ] && [ -z "$(find "$top/config" "$top/src" \
                                   "$top/build/nginx.sh" \
                                   -newer "$dir/env" 2>/dev/null)" ]
then
    echo "$name is up to date" >&2
    echo "$dir/env"
    exit 0
fi

src="$out/src/$name"
if [ ! -f "$src/configure" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    tar xzf "$tarball" -C "$src" --strip-components=1
fi

ccopt="-g -O2"
ldopt=""
if [ $asan = yes ]; then
    # nginx core passes NULL with length 0 to memcpy() (ngx_pstrdup at
    # start-up): harmless, and not ours, so that one check is off
    ccopt="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined"
    ccopt="$ccopt -fno-sanitize=nonnull-attribute"
    ccopt="$ccopt -fno-sanitize-recover=undefined"
    # ASan brings its own crypt(), so configure would not link libcrypt
    # and auth_basic's crypt() would crash: link it by hand
    ldopt="-fsanitize=address,undefined -lcrypt"
fi

if [ $static = yes ]; then
    addon="--add-module=$top"
else
    addon="--add-dynamic-module=$top"
fi

echo "building nginx $upstream ($name) in $src" >&2
start=$(date +%s)
(
    cd "$src"
    # configure again only when the addon's config or these options
    # changed; make itself rebuilds just what changed.  auth_request is
    # here for the tests of access modules that run before ours.
    set -- --prefix="$dir" --with-compat --with-debug \
        --with-http_ssl_module --with-http_v2_module \
        --with-http_stub_status_module --with-http_auth_request_module \
        --with-threads \
        --with-cc-opt="$ccopt" --with-ld-opt="$ldopt" "$addon"
    if [ ! -f objs/Makefile ] || [ "$top/config" -nt objs/Makefile ] \
       || [ "$*" != "$(cat objs/llm-configure-args 2>/dev/null)" ]
    then
        ./configure "$@" >configure.log 2>&1 \
            || { tail -30 configure.log >&2; exit 1; }
        echo "$*" >objs/llm-configure-args
    fi
    make -j"$jobs" >make.log 2>&1 || { grep -B2 -A8 -E 'error|Error' \
        make.log | head -60 >&2; exit 1; }
    rm -rf "$dir"
    make install >install.log 2>&1
)
echo "built $name in $(( $(date +%s) - start )) s" >&2

module=""
[ $static = yes ] || module="$dir/modules/ngx_http_llm_module.so"

cat >"$dir/env" <<END
LLM_NGINX=$dir/sbin/nginx
LLM_MODULE=$module
export LLM_NGINX LLM_MODULE
END
echo "$dir/env"
