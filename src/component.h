/*
 * component.h - the `worker` and `sink` commands: one process running one
 * stage script (or the sink script) between routers, through the Lua side
 * of our transport (zmq-rx.lua). `securestreams run` starts them; users can
 * start them by hand too.
 */
#ifndef SS_COMPONENT_H
#define SS_COMPONENT_H

/* Exit statuses shared by the components and `run`. */
#define SS_EXIT_OK 0
#define SS_EXIT_ERROR 1       /* setup, I/O, protocol or script error */
#define SS_EXIT_USAGE 2
#define SS_EXIT_POLICY 3      /* a bad record under on_error = fail */
#define SS_EXIT_INCOMPLETE 4  /* the sink could not account for every batch */

int ss_cmd_worker(int argc, char **argv);
int ss_cmd_sink(int argc, char **argv);

#endif
