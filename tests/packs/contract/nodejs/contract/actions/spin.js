exports.run = () => {
  for (;;) { /* never ends */ }
};
