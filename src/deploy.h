/*
 * deploy.h - `securestreams deploy SPEC --format compose|swarm`: a pipeline
 * spec turned into a Docker Compose file or a Docker Swarm stack file, with
 * one service per router, per stage (replicas = workers), for the source and
 * for the sink, on one network (docs/deploy.md).
 *
 * The file is a pure function of the spec, the files it names (the scripts'
 * contents, the key's id, a sealed input's stream id), the options and the
 * directory the file is written to: same inputs, same bytes. Nothing in it
 * comes from the clock, the host name or a random number.
 */
#ifndef SS_DEPLOY_H
#define SS_DEPLOY_H

/* The `deploy` command. Exit status 0 when the file was written, 2 on a
 * usage or spec error, 1 when a file cannot be read or written. */
int ss_cmd_deploy(int argc, char **argv);

#endif
