/*
 * gen.h - deterministic generator of airline on-time data in the Data Expo
 * 2009 schema (29 columns, header line, "NA" for missing values).
 */
#ifndef SS_GEN_H
#define SS_GEN_H

#include "base/common.h"

#include <stdio.h>

/* Write a header line and `rows` rows to out; same seed, same bytes. */
ss_err ss_gen_flights(FILE *out, uint64_t rows, uint64_t seed);


#endif
