() => { let tries = 0; const go = () => {
  if (document.getElementById("answer-0")?.offsetParent) document.getElementById("status").scrollIntoView();
  else if (tries++ < 100) setTimeout(go, 50); }; go(); }