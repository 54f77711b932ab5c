/*
 * pipeline.h - `securestreams run SPEC`: every component of a pipeline as a
 * local process on loopback (routers first, then the sink, the workers and
 * the source), supervised until the sink has the whole result.
 */
#ifndef SS_PIPELINE_H
#define SS_PIPELINE_H

int ss_cmd_run(int argc, char **argv);

#endif
