/*
 * cli.c - option tables, usage and errors of the commands (cli.h).
 *
 * Values from the environment are checked exactly like values on the
 * command line, and a bad one is an error naming the variable: a typo in a
 * deployment's environment stops the component at start, never silently
 * falls back to a default.
 */
#include "cli.h"
#include "base/common.h"

#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define HELP_COLUMN 24   /* where option help starts in the usage text */

int ss_cli_fail(const ss_cli *cmd, int status, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "securestreams %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (status == SS_EXIT_USAGE)
        fprintf(stderr, "(securestreams %s --help prints the usage)\n", cmd->name);
    return status;
}

void ss_cli_usage(const ss_cli *cmd, FILE *f)
{
    fprintf(f, "usage: securestreams %s%s%s\n", cmd->name, cmd->synopsis ? " " : "",
            cmd->synopsis ? cmd->synopsis : "");
    if (cmd->about)
        fprintf(f, "%s\n", cmd->about);
    for (const ss_opt *o = cmd->opts; o && o->name; o++) {
        if (o->flags & SS_OPTF_HIDDEN)
            continue;
        char head[64];
        int n;
        if (o->letter)
            n = snprintf(head, sizeof head, "  -%c, %s%s%s", o->letter, o->name, o->arg ? " " : "",
                         o->arg ? o->arg : "");
        else
            n = snprintf(head, sizeof head, "  %s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        fputs(head, f);
        if (n >= HELP_COLUMN - 1)
            fprintf(f, "\n%*s", HELP_COLUMN, "");
        else
            fprintf(f, "%*s", HELP_COLUMN - n, "");
        for (const char *p = o->help ? o->help : ""; *p; p++) {
            fputc(*p, f);
            if (*p == '\n')
                fprintf(f, "%*s", HELP_COLUMN, "");
        }
        if (o->type == SS_OPT_LIST)
            fprintf(f, " (repeatable)");
        if (o->env)
            fprintf(f, " (env %s)", o->env);
        fputc('\n', f);
    }
    if (cmd->epilogue)
        fprintf(f, "%s\n", cmd->epilogue);
}

/* Milliseconds: digits, then nothing or "ms" (milliseconds) or "s" (seconds). */
static int parse_ms(const char *s, uint64_t max, uint64_t *out)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 19)
        return -1;
    char digits[20];
    memcpy(digits, s, n);
    digits[n] = '\0';
    uint64_t v, scale;
    if (!strcmp(s + n, "") || !strcmp(s + n, "ms"))
        scale = 1;
    else if (!strcmp(s + n, "s"))
        scale = 1000;
    else
        return -1;
    if (ss_parse_u64(digits, 10, SS_NUM_PLAIN, max / scale, &v) != 0 || v * scale > max)
        return -1;
    *out = v * scale;
    return 0;
}

/* Store `value` into o. `from` names where it came from in messages: the
 * option ("--workers") or the variable ("TO"). */
static int store(const ss_cli *cmd, const ss_opt *o, const char *from, const char *value)
{
    uint64_t v;
    switch (o->type) {
    case SS_OPT_FLAG:
        *(int *)o->out = (o->flags & SS_OPTF_CLEAR) ? 0 : o->value ? o->value : 1;
        return 0;
    case SS_OPT_STRING:
        if (!*value)
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s needs a value%s%s", from, o->arg ? ": " : "",
                               o->arg ? o->arg : "");
        *(const char **)o->out = value;
        return 0;
    case SS_OPT_UINT:
        if (ss_parse_u64(value, (o->flags & SS_OPTF_HEX) ? 0 : 10, o->suffix, o->max, &v) != 0
            || v < o->min) {
            char range[64] = "";   /* stays empty when no bound is worth printing */
            if (o->max < UINT64_MAX / 2)
                snprintf(range, sizeof range, " from %llu to %llu", (unsigned long long)o->min,
                         (unsigned long long)o->max);
            else if (o->min > 0)
                snprintf(range, sizeof range, " of at least %llu", (unsigned long long)o->min);
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s wants a whole number%s%s, not '%s'", from,
                               range, o->suffix == SS_NUM_BYTES ? " (bytes; K, M, G suffixes)"
                               : o->suffix == SS_NUM_KMG ? " (K, M, G suffixes)" : "", value);
        }
        *(uint64_t *)o->out = v;
        return 0;
    case SS_OPT_MS:
        if (parse_ms(value, o->max, &v) != 0 || v < o->min)
            return ss_cli_fail(cmd, SS_EXIT_USAGE,
                               "%s wants a time from %llu to %llu ms (as 500, 500ms or 2s), not '%s'",
                               from, (unsigned long long)o->min, (unsigned long long)o->max, value);
        *(uint64_t *)o->out = v;
        return 0;
    case SS_OPT_CHOICE:
        for (const char *const *c = o->choices; *c; c++)
            if (!strcmp(*c, value)) {
                *(const char **)o->out = *c;
                return 0;
            }
        {
            char list[256] = "";
            size_t len = 0;
            for (const char *const *c = o->choices; *c && len < sizeof list; c++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", *c);
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s: '%s' is not one of %s", from, value, list);
        }
    case SS_OPT_LIST: {
        ss_optlist *l = o->out;
        if (!*value)
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s needs a value%s%s", from, o->arg ? ": " : "",
                               o->arg ? o->arg : "");
        if ((uint64_t)l->n >= o->max)
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s given more than %llu times", from,
                               (unsigned long long)o->max);
        l->items[l->n++] = value;
        return 0;
    }
    }
    return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s: unknown option type", from);
}

/* The entry of `arg` ("--name", "--name=v" or "-x"); *inline_value is the
 * text after '=' when there is one. */
static const ss_opt *find(const ss_cli *cmd, const char *arg, const char **inline_value,
                          int *ambiguous)
{
    *inline_value = NULL;
    *ambiguous = 0;
    const char *eq = strchr(arg, '=');
    size_t typed = eq ? (size_t)(eq - arg) : strlen(arg);
    const ss_opt *prefix_of = NULL;
    for (const ss_opt *o = cmd->opts; o && o->name; o++) {
        size_t n = strlen(o->name);
        if (typed == n && !strncmp(arg, o->name, n)) {
            if (eq)
                *inline_value = eq + 1;
            return o;
        }
        if (o->letter && arg[0] == '-' && arg[1] == o->letter && arg[2] == '\0')
            return o;
        /* as getopt_long: an unambiguous abbreviation of a long option */
        if (typed > 2 && typed < n && arg[1] == '-' && !strncmp(arg, o->name, typed)) {
            *ambiguous |= prefix_of != NULL;
            prefix_of = o;
        }
    }
    if (!prefix_of || *ambiguous)
        return NULL;
    if (eq)
        *inline_value = eq + 1;
    return prefix_of;
}

/* The most options a table may have (cli.h keeps them short). */
#define MAX_OPTS 64

int ss_cli_parse(const ss_cli *cmd, int argc, char **argv, char **args, int *nargs)
{
    int rc, positional = 0, options_done = 0;
    unsigned char env_list[MAX_OPTS] = { 0 };   /* a LIST still holding its variable's value */
    if (nargs)
        *nargs = 0;
    for (const ss_opt *o = cmd->opts; o && o->name; o++) {
        assert(o - cmd->opts < MAX_OPTS);
        const char *v = o->env ? getenv(o->env) : NULL;
        if (!v || !*v)
            continue;
        if (o->type == SS_OPT_FLAG) {
            if (strcmp(v, "0") != 0)
                store(cmd, o, o->env, v);
        } else if ((rc = store(cmd, o, o->env, v)) != 0) {
            return rc;
        } else if (o->type == SS_OPT_LIST) {
            env_list[o - cmd->opts] = 1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *value = NULL;
        if (!options_done && !strcmp(a, "--")) {
            options_done = 1;
            continue;
        }
        if (!options_done && a[0] == '-' && a[1] != '\0') {
            if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                ss_cli_usage(cmd, stdout);
                return SS_EXIT_OK;
            }
            int ambiguous;
            const ss_opt *o = find(cmd, a, &value, &ambiguous);
            if (!o)
                return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s option '%s'",
                                   ambiguous ? "ambiguous" : "unknown", a);
            /* messages name the option as it was typed: -o or --output */
            const char *typed = value ? o->name : a;
            if (o->type == SS_OPT_FLAG) {
                if (value)
                    return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s takes no value", o->name);
            } else if (!value) {
                if (i + 1 >= argc)
                    return ss_cli_fail(cmd, SS_EXIT_USAGE, "%s needs a value%s%s", typed,
                                       o->arg ? ": " : "", o->arg ? o->arg : "");
                value = argv[++i];
            }
            if (o->type == SS_OPT_LIST && env_list[o - cmd->opts]) {
                ((ss_optlist *)o->out)->n = 0;
                env_list[o - cmd->opts] = 0;
            }
            if ((rc = store(cmd, o, typed, value)) != 0)
                return rc;
            continue;
        }
        if (positional >= cmd->max_args)
            return ss_cli_fail(cmd, SS_EXIT_USAGE, "unexpected argument '%s'", a);
        args[positional++] = argv[i];
        if (cmd->options_first)
            options_done = 1;
    }
    if (positional < cmd->min_args)
        return ss_cli_fail(cmd, SS_EXIT_USAGE, "missing arguments: securestreams %s %s", cmd->name,
                           cmd->synopsis ? cmd->synopsis : "");
    if (nargs)
        *nargs = positional;
    return SS_CLI_GO;
}
