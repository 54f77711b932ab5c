-- dhrystone: Reinhold Weicker's Dhrystone 2.1 (integer arithmetic, records,
-- strings, procedure calls), written for Lua: records are tables, the two
-- global arrays are tables indexed from 0 as in C, characters are bytes.
-- securestreams lua bench/lua/dhrystone.lua N      (N runs of the main loop)
-- At the end every global and local is checked against the values Dhrystone
-- specifies (an error names the first that differs). Used as a module (no
-- argument) it returns run(n) -> a summary string of those values.

local IDENT_1, IDENT_2, IDENT_3, IDENT_4, IDENT_5 = 0, 1, 2, 3, 4
local CH_A, CH_B, CH_C, CH_R, CH_W, CH_Z = 65, 66, 67, 82, 87, 90

local function run(number_of_runs)
  -- globals
  local ptr_glob, next_ptr_glob
  local int_glob, bool_glob = 0, false
  local ch_1_glob, ch_2_glob = 0, 0
  local arr_1_glob, arr_2_glob = {}, {}
  for i = 0, 49 do
    arr_1_glob[i] = 0
    local row = {}
    for j = 0, 49 do row[j] = 0 end
    arr_2_glob[i] = row
  end

  local function new_record()
    return { ptr_comp = nil, discr = IDENT_1, enum_comp = IDENT_1, int_comp = 0, str_comp = '' }
  end
  local function assign(to, from)   -- structassign(*to, *from)
    to.ptr_comp, to.discr, to.enum_comp = from.ptr_comp, from.discr, from.enum_comp
    to.int_comp, to.str_comp = from.int_comp, from.str_comp
  end

  local function func_3(enum_par)
    return enum_par == IDENT_3
  end

  local function func_1(ch_1_par, ch_2_par)
    local ch_1_loc = ch_1_par
    local ch_2_loc = ch_1_loc
    if ch_2_loc ~= ch_2_par then return IDENT_1 end
    ch_1_glob = ch_1_loc
    return IDENT_2
  end

  local function func_2(str_1_par, str_2_par)
    local int_loc, ch_loc = 2, 0
    while int_loc <= 2 do
      -- C: Str_1_Par_Ref[Int_Loc], Str_2_Par_Ref[Int_Loc + 1] (0-based)
      if func_1(str_1_par:byte(int_loc + 1), str_2_par:byte(int_loc + 2)) == IDENT_1 then
        ch_loc = CH_A
        int_loc = int_loc + 1
      end
    end
    if ch_loc >= CH_W and ch_loc < CH_Z then int_loc = 7 end
    if ch_loc == CH_R then return true end
    if str_1_par > str_2_par then
      int_loc = int_loc + 7
      int_glob = int_loc
      return true
    end
    return false
  end

  local function proc_7(int_1_par, int_2_par)   -- returns *Int_Par_Ref
    local int_loc = int_1_par + 2
    return int_2_par + int_loc
  end

  local function proc_6(enum_val_par)            -- returns *Enum_Ref_Par
    local enum_ref = enum_val_par
    if not func_3(enum_val_par) then enum_ref = IDENT_4 end
    if enum_val_par == IDENT_1 then
      enum_ref = IDENT_1
    elseif enum_val_par == IDENT_2 then
      if int_glob > 100 then enum_ref = IDENT_1 else enum_ref = IDENT_4 end
    elseif enum_val_par == IDENT_3 then
      enum_ref = IDENT_2
    elseif enum_val_par == IDENT_5 then
      enum_ref = IDENT_3
    end
    return enum_ref
  end

  local function proc_8(arr_1_par, arr_2_par, int_1_par, int_2_par)
    local int_loc = int_1_par + 5
    arr_1_par[int_loc] = int_2_par
    arr_1_par[int_loc + 1] = arr_1_par[int_loc]
    arr_1_par[int_loc + 30] = int_loc
    local row = arr_2_par[int_loc]
    for int_index = int_loc, int_loc + 1 do row[int_index] = int_loc end
    row[int_loc - 1] = row[int_loc - 1] + 1
    arr_2_par[int_loc + 20][int_loc] = arr_1_par[int_loc]
    int_glob = 5
  end

  local function proc_5()
    ch_1_glob = CH_A
    bool_glob = false
  end

  local function proc_4()
    local bool_loc = ch_1_glob == CH_A
    bool_glob = bool_loc or bool_glob
    ch_2_glob = CH_B
  end

  local function proc_3(ptr_ref_par)             -- returns the new *Ptr_Ref_Par
    if ptr_glob ~= nil then ptr_ref_par = ptr_glob.ptr_comp end
    ptr_glob.int_comp = proc_7(10, int_glob)
    return ptr_ref_par
  end

  local function proc_2(int_par_ref)             -- returns the new *Int_Par_Ref
    local int_loc = int_par_ref + 10
    local enum_loc
    repeat
      if ch_1_glob == CH_A then
        int_loc = int_loc - 1
        int_par_ref = int_loc - int_glob
        enum_loc = IDENT_1
      end
    until enum_loc == IDENT_1
    return int_par_ref
  end

  local function proc_1(ptr_val_par)
    local next_record = ptr_val_par.ptr_comp
    assign(ptr_val_par.ptr_comp, ptr_glob)
    ptr_val_par.int_comp = 5
    next_record.int_comp = ptr_val_par.int_comp
    next_record.ptr_comp = ptr_val_par.ptr_comp
    next_record.ptr_comp = proc_3(next_record.ptr_comp)
    if next_record.discr == IDENT_1 then
      next_record.int_comp = 6
      next_record.enum_comp = proc_6(ptr_val_par.enum_comp)
      next_record.ptr_comp = ptr_glob.ptr_comp
      next_record.int_comp = proc_7(next_record.int_comp, 10)
    else
      assign(ptr_val_par, ptr_val_par.ptr_comp)
    end
  end

  -- main
  next_ptr_glob = new_record()
  ptr_glob = new_record()
  ptr_glob.ptr_comp = next_ptr_glob
  ptr_glob.discr = IDENT_1
  ptr_glob.enum_comp = IDENT_3
  ptr_glob.int_comp = 40
  ptr_glob.str_comp = "DHRYSTONE PROGRAM, SOME STRING"
  local str_1_loc = "DHRYSTONE PROGRAM, 1'ST STRING"
  local str_2_loc
  arr_2_glob[8][7] = 10

  local int_1_loc, int_2_loc, int_3_loc, enum_loc = 0, 0, 0, IDENT_1
  for run_index = 1, number_of_runs do
    proc_5()
    proc_4()
    int_1_loc = 2
    int_2_loc = 3
    str_2_loc = "DHRYSTONE PROGRAM, 2'ND STRING"
    enum_loc = IDENT_2
    bool_glob = not func_2(str_1_loc, str_2_loc)
    while int_1_loc < int_2_loc do
      int_3_loc = 5 * int_1_loc - int_2_loc
      int_3_loc = proc_7(int_1_loc, int_2_loc)
      int_1_loc = int_1_loc + 1
    end
    proc_8(arr_1_glob, arr_2_glob, int_1_loc, int_3_loc)
    proc_1(ptr_glob)
    for ch_index = CH_A, ch_2_glob do
      if enum_loc == func_1(ch_index, CH_C) then
        enum_loc = proc_6(IDENT_1)
        str_2_loc = "DHRYSTONE PROGRAM, 3'RD STRING"
        int_2_loc = run_index
        int_glob = run_index
      end
    end
    int_2_loc = int_2_loc * int_1_loc
    int_1_loc = int_2_loc // int_3_loc
    int_2_loc = 7 * (int_2_loc - int_3_loc) - int_1_loc
    int_1_loc = proc_2(int_1_loc)
  end

  -- the values Dhrystone 2.1 prints with "should be: ..."
  local checks = {
    { 'Int_Glob', int_glob, 5 }, { 'Bool_Glob', bool_glob, true },
    { 'Ch_1_Glob', ch_1_glob, CH_A }, { 'Ch_2_Glob', ch_2_glob, CH_B },
    { 'Arr_1_Glob[8]', arr_1_glob[8], 7 }, { 'Arr_2_Glob[8][7]', arr_2_glob[8][7], number_of_runs + 10 },
    { 'Ptr_Glob->Discr', ptr_glob.discr, IDENT_1 }, { 'Ptr_Glob->Enum_Comp', ptr_glob.enum_comp, IDENT_3 },
    { 'Ptr_Glob->Int_Comp', ptr_glob.int_comp, 17 },
    { 'Ptr_Glob->Str_Comp', ptr_glob.str_comp, "DHRYSTONE PROGRAM, SOME STRING" },
    { 'Next_Ptr_Glob->Discr', next_ptr_glob.discr, IDENT_1 },
    { 'Next_Ptr_Glob->Enum_Comp', next_ptr_glob.enum_comp, IDENT_2 },
    { 'Next_Ptr_Glob->Int_Comp', next_ptr_glob.int_comp, 18 },
    { 'Int_1_Loc', int_1_loc, 5 }, { 'Int_2_Loc', int_2_loc, 13 }, { 'Int_3_Loc', int_3_loc, 7 },
    { 'Enum_Loc', enum_loc, IDENT_2 },
    { 'Str_1_Loc', str_1_loc, "DHRYSTONE PROGRAM, 1'ST STRING" },
    { 'Str_2_Loc', str_2_loc, "DHRYSTONE PROGRAM, 2'ND STRING" },
  }
  local out = {}
  for _, c in ipairs(checks) do
    if c[2] ~= c[3] then
      error(('dhrystone: %s is %s, should be %s'):format(c[1], tostring(c[2]), tostring(c[3])))
    end
    out[#out + 1] = tostring(c[2])
  end
  return table.concat(out, ' ', 1, 6)
end

local n = ...
if n then
  local t0 = os.clock()
  local result = run(math.tointeger(tonumber(n)) or error('dhrystone: N must be an integer'))
  local cpu = os.clock() - t0
  print(result)
  -- scripts/bench-lua: the run's CPU seconds, without the interpreter's start
  if os.getenv('BENCH_CPU') then io.stderr:write(('cpu %.6f\n'):format(cpu)) end
end
return run
