const { spawn } = require("child_process");

// Every child spawns too: only the pids limit holds it.
const BOMB = 'const {spawn}=require("child_process");setInterval(()=>{try{spawn(process.execPath,["-e",process.argv[1]],{stdio:"ignore"}).on("error",()=>{})}catch(e){}},5)';

exports.run = async ({ seconds = 3 }) => {
  let failures = 0;
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    await new Promise((resolve) => {
      let child;
      try {
        child = spawn(process.execPath, ["-e", BOMB, BOMB], { stdio: "ignore", detached: false });
      } catch (error) {
        failures += 1;
        return setTimeout(resolve, 10);
      }
      child.on("error", () => { failures += 1; });
      child.on("spawn", () => {});
      setTimeout(resolve, 10);
    });
  }
  return { fork_failures: failures };
};
