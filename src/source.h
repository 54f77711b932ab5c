/*
 * source.h - the source component: reads a file of lines (CSV or JSON lines)
 * or stdin, cuts it into batches of about 64 KiB, and publishes them to the
 * first router with its own lineage (source id, batch number) and the input
 * line number of each batch's first record, then end of stream.
 */
#ifndef SS_SOURCE_H
#define SS_SOURCE_H

#include "common.h"

int ss_cmd_source(int argc, char **argv);

#endif
