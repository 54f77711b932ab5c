-- Source: send the lines of DATA_FILE (header skipped) to TO.
local ZmqRx = require 'zmq-rx'

local input = os.getenv('DATA_FILE') or 'flights.csv'
local to_socket = os.getenv('TO') or 'tcp://localhost:5555'

ZmqRx.Subject.fromFileByLine(input)
  :skip(1)
  :subscribeToSocket(to_socket)
