# The source tree keeps its shape: the library apart from the commands, one
# way to do each common thing, and docs/architecture.md naming every file.
# tier: fast
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

# in_table FILE: docs/architecture.md's source table names FILE, as
# `name.c`, `name.[ch]` or `name.h` in its folder's section
in_table() {
    base=$(basename "$1")
    stem=${base%.*}
    grep -q -e "\`$base\`" -e "\`$stem.\[ch\]\`" "$ROOT/docs/architecture.md"
}
missing=""
for f in lib/*/*.c lib/*/*.h lib/*/*.lua src/*.c src/*.h; do
    in_table "$f" || missing="$missing $f"
done
check "architecture.md names every file of lib/ and src/${missing:+ (missing:$missing)}" test -z "$missing"
# control: the same check does see a file the table does not name
not_in_table() { ! in_table "$1"; }
check "the table check finds an unnamed file" not_in_table "$T/unlisted_module.c"

# no file in lib/ includes a command's header (the build also refuses it:
# lib/ is compiled with -Ilib alone)
hdrs=$(cd src && ls *.h)
includes_src() { for h in $hdrs; do grep -l "#include \"$h\"" "$@"; done; }
bad=$(includes_src lib/*/*.[ch])
check "nothing in lib/ includes a header of src/${bad:+ ($bad)}" test -z "$bad"
printf '#include "cli.h"\n' >"$T/bad_lib.c"
found_src_include() { test -n "$(includes_src "$@")"; }
check "the include check finds a command's header" found_src_include "$T/bad_lib.c"

# one integer parser (ss_parse_u64), one option parser (src/cli.c), one
# reader of SS_STREAM (ss_stream_from_env)
raw_parsing() { grep -nE '\b(strtol|strtoul|strtoll|strtoull|atoi|atol|atoll|getopt|getopt_long)\(' "$@"; }
raw=$(raw_parsing lib/*/*.c src/*.c | grep -v '^lib/base/common.c')
check "no raw integer or option parsing outside ss_parse_u64${raw:+: $raw}" test -z "$raw"
env=$(grep -n 'getenv("SS_STREAM")' lib/*/*.c src/*.c | grep -v '^lib/wire/frame.c')
check "SS_STREAM is read in one place${env:+: $env}" test -z "$env"
# control: the greps do find what they look for
printf 'int x(void) { return atoi("1"); }\n' >"$T/bad.c"
raw_found() { raw_parsing "$@" >/dev/null; }
check "the parser check finds a raw atoi" raw_found "$T/bad.c"
