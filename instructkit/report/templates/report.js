const table = document.getElementById('records');
if (table) {
  const body = table.tBodies[0];
  const filter = document.getElementById('filter');
  const applyFilter = () => {
    const needle = filter.value.toLowerCase();
    let shown = 0;
    for (const row of body.rows) {
      const hit = row.textContent.toLowerCase().includes(needle);
      row.hidden = !hit; shown += hit;
    }
    document.getElementById('shown').textContent = shown;
  };
  filter.addEventListener('input', applyFilter);
  // report.html#filter=capital opens with the table filtered: a link to the records you mean.
  if (location.hash.startsWith('#filter=')) {
    const given = location.hash.slice(8);
    try {
      filter.value = decodeURIComponent(given);
    } catch (error) {  // a malformed escape (a link cut short): filter by the text as written
      filter.value = given;
    }
    applyFilter();
  }
  table.querySelectorAll('th').forEach((th, column) => {
    let ascending = true;
    th.addEventListener('click', () => {
      const key = row => row.cells[column].dataset.sort ?? row.cells[column].textContent;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : (isNaN(nx) - isNaN(ny)) || x.localeCompare(y);
        return ascending ? order : -order;
      });
      ascending = !ascending;
      rows.forEach(row => body.appendChild(row));
    });
  });
}
